"""The Roboflow emulator over HTTP: routes, shapes, generated data, CLI and every fault switch."""

from __future__ import annotations

import hashlib
import io
import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from pipeline.testing.roboflow_emulator import (
    Dataset,
    EmulatorConfig,
    FaultConfig,
    RoboflowEmulator,
    export_file_name,
    sniff_content_type,
)

KEY = EmulatorConfig().api_key
SDK_REQUIRED_PROJECT_KEYS = {
    "annotation", "classes", "colors", "created", "id", "images", "name", "public", "splits", "type",
    "unannotated", "updated",
}  # fmt: skip


def call(emu: RoboflowEmulator, method: str, path: str, key: str | None = KEY, **kwargs) -> requests.Response:
    params = dict(kwargs.pop("params", {}))
    if key is not None:
        params["api_key"] = key
    return requests.request(method, emu.api_url + path, params=params, timeout=10, **kwargs)


def project_path(emu: RoboflowEmulator, suffix: str = "") -> str:
    return f"/{emu.config.workspace}/{emu.config.project}{suffix}"


def search(emu: RoboflowEmulator, key: str | None = KEY, **body) -> requests.Response:
    return call(emu, "POST", project_path(emu, "/search"), key=key, json=body)


def details(emu: RoboflowEmulator, image_id: str) -> requests.Response:
    return call(emu, "GET", project_path(emu, f"/images/{image_id}"))


def list_by_offset(emu: RoboflowEmulator, limit: int = 50, **body) -> list[str]:
    """Page like the SDK's search_all: advance by limit, stop at the first short page."""
    ids: list[str] = []
    offset = 0
    while True:
        page = search(emu, offset=offset, limit=limit, **body).json()["results"]
        ids += [result["id"] for result in page]
        if len(page) < limit:
            return ids
        offset += limit


def list_by_token(emu: RoboflowEmulator, query: str, page_size: int = 50, **body) -> tuple[list[str], list[dict]]:
    ids: list[str] = []
    pages: list[dict] = []
    token = None
    while True:
        payload = {"query": query, "pageSize": page_size, **body}
        if token:
            payload["continuationToken"] = token
        response = call(emu, "POST", f"/{emu.config.workspace}/search/v1", json=payload)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        ids += [result["id"] for result in page["results"]]
        token = page["continuationToken"]
        if not page["results"] or not token:
            return ids, pages


def raw_get(url: str) -> tuple[bytes, bytes]:
    """GET over a bare socket: (head, body bytes actually received before the server closed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# ---- routes and shapes ------------------------------------------------------------------------


def test_root_answers_get_and_post_with_the_workspace(roboflow_emulator):
    emu = roboflow_emulator(image_count=10)
    for method in ("GET", "POST"):
        response = call(emu, method, "/", params={"nocache": "true"})
        assert response.status_code == 200
        assert response.json()["workspace"] == emu.config.workspace
        assert response.json()["welcome"] == "Welcome to the Roboflow API."


def test_auth_accepts_query_bearer_and_json_body_and_ignores_unknown_params(roboflow_emulator):
    emu = roboflow_emulator(image_count=10)
    url = emu.api_url + project_path(emu, "/search")
    by_query = requests.post(url, params={"api_key": KEY, "nocache": "true", "whatever": "1"}, json={}, timeout=5)
    by_bearer = requests.post(url, headers={"Authorization": f"Bearer {KEY}"}, json={}, timeout=5)
    by_body = requests.post(url, json={"api_key": KEY}, timeout=5)
    assert [r.status_code for r in (by_query, by_bearer, by_body)] == [200, 200, 200]
    assert by_query.json() == by_bearer.json() == by_body.json()
    header_get = requests.get(emu.api_url + project_path(emu), headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert header_get.status_code == 200


def test_bad_key_gets_oauth_401_echoing_the_key_and_missing_key_is_401_too(roboflow_emulator):
    emu = roboflow_emulator(image_count=10)
    wrong = "rf_wrong-key_42"
    for response in (
        call(emu, "GET", project_path(emu), key=wrong),
        requests.get(emu.api_url + "/", headers={"Authorization": f"Bearer {wrong}"}, timeout=5),
        requests.post(emu.api_url + project_path(emu, "/search"), json={"api_key": wrong}, timeout=5),
    ):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "OAuthException"
        assert error["key"] == wrong
        assert error["message"] == "This API key does not exist (or has been revoked)."
    missing = call(emu, "GET", project_path(emu), key=None)
    assert missing.status_code == 401
    assert "key" not in missing.json()["error"]
    assert emu.counters()["status:401"] == 4


def test_workspace_and_project_carry_every_key_the_sdk_reads(roboflow_emulator):
    emu = roboflow_emulator(image_count=40, versions=3)
    workspace = call(emu, "GET", f"/{emu.config.workspace}").json()["workspace"]
    assert {"name", "url", "projects", "members"} <= set(workspace)
    assert workspace["projects"][0]["versions"] == 3
    body = call(emu, "GET", project_path(emu)).json()
    project = body["project"]
    assert SDK_REQUIRED_PROJECT_KEYS <= set(project)
    assert project["multilabel"] is False
    assert project["id"] == f"{emu.config.workspace}/{emu.config.project}"
    assert set(project["colors"]) == set(project["classes"])
    assert [v["id"].rsplit("/", 1)[1] for v in body["versions"]] == ["3", "2", "1"]
    for version in body["versions"]:
        assert {"id", "name", "created", "images", "splits", "preprocessing", "augmentation", "exports"} <= set(version)


def test_project_counts_agree_with_what_the_details_route_serves(roboflow_emulator):
    emu = roboflow_emulator(image_count=60)
    project = call(emu, "GET", project_path(emu)).json()["project"]
    classes: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    unannotated = 0
    for image_id in emu.dataset.image_ids:
        image = details(emu, image_id).json()["image"]
        splits[image["split"]] += 1
        if "annotation" not in image:
            unannotated += 1
        else:
            classes.update(box["label"] for box in image["annotation"]["boxes"])
    assert project["images"] == 60 == sum(project["splits"].values())
    assert project["splits"] == {split: splits[split] for split in ("train", "valid", "test")}
    assert {name: count for name, count in project["classes"].items() if count} == dict(classes)
    assert project["unannotated"] == unannotated
    assert 5 <= len(project["classes"]) <= 8


def test_unknown_workspace_project_and_path_are_404(roboflow_emulator):
    emu = roboflow_emulator(image_count=5)
    unknown_project = call(emu, "GET", f"/{emu.config.workspace}/nope")
    assert unknown_project.status_code == 404
    assert unknown_project.json()["error"]["hint"]
    assert call(emu, "GET", "/other-ws").status_code == 404
    express = call(emu, "DELETE", project_path(emu))
    assert express.status_code == 404
    assert "Cannot DELETE" in express.text


def test_version_reports_snapshot_and_unknown_version_is_500(roboflow_emulator):
    emu = roboflow_emulator(image_count=30, versions=2)
    version = call(emu, "GET", project_path(emu, "/1"), params={"nocache": "true"}).json()["version"]
    assert version["generating"] is False
    assert version["progress"] == 1
    assert version["images"] == 15 == sum(version["splits"].values())
    assert version["exports"] == []
    unknown = call(emu, "GET", project_path(emu, "/7"))
    assert unknown.status_code == 500
    assert unknown.json()["error"]["type"] == "InternalServerError"
    emu.faults = FaultConfig(unknown_version_status=404)
    assert call(emu, "GET", project_path(emu, "/7")).status_code == 404


def test_export_polls_then_links_to_a_coco_zip_matching_the_version(roboflow_emulator):
    emu = roboflow_emulator(image_count=40, export_pending_polls=2, project_type="instance-segmentation")
    statuses = []
    for _ in range(3):
        response = call(emu, "GET", project_path(emu, "/2/coco"), params={"nocache": "true"})
        statuses.append(response.status_code)
    assert statuses == [202, 202, 200]
    link = response.json()["export"]["link"]
    token = dict(p.split("=") for p in urlsplit(link).query.split("&"))["key"]
    assert token and token != KEY
    download = requests.get(link, timeout=10)
    assert download.status_code == 200
    assert int(download.headers["Content-Length"]) == len(download.content)
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    names = set(archive.namelist())
    assert {"README.dataset.txt", "README.roboflow.txt"} <= names
    version = emu.dataset.version(2)
    records = {export_file_name(r, 2): r for r in version.records()}
    exported_images = 0
    for split in ("train", "valid", "test"):
        coco = json.loads(archive.read(f"{split}/_annotations.coco.json"))
        assert coco["info"]["description"] == "Exported from roboflow.ai"
        assert coco["categories"][0] == {"id": 0, "name": emu.dataset.annotation_group, "supercategory": "none"}
        assert [c["id"] for c in coco["categories"]] == list(range(len(emu.dataset.classes) + 1))
        for image in coco["images"]:
            exported_images += 1
            assert re.fullmatch(r"[A-Za-z0-9_-]+_?[A-Za-z0-9]*\.rf\.[0-9a-f]{32}\.jpg", image["file_name"])
            record = records[image["file_name"]]
            assert record.split == split
            decoded = Image.open(io.BytesIO(archive.read(f"{split}/{image['file_name']}")))
            assert decoded.size == (record.width, record.height) == (image["width"], image["height"])
            annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert len(annotations) == len(record.boxes)
            for annotation, box in zip(annotations, record.boxes, strict=True):
                assert annotation["bbox"][0] == pytest.approx(box["x"] - box["width"] / 2, abs=1e-3)
                assert annotation["bbox"][1] == pytest.approx(box["y"] - box["height"] / 2, abs=1e-3)
                assert annotation["segmentation"][0][:2] == [box["points"][0]["x"], box["points"][0]["y"]]
    assert exported_images == version.image_count == 40
    again = call(emu, "GET", project_path(emu, "/2"))
    assert again.json()["version"]["exports"] == ["coco"]
    assert call(emu, "GET", project_path(emu, "/2/not-a-format")).status_code == 400
    assert requests.get(link.replace(token, "wrong"), timeout=5).status_code == 403


def test_yolo_export_has_data_yaml_and_normalised_labels(roboflow_emulator):
    emu = roboflow_emulator(image_count=12, export_pending_polls=0)
    link = call(emu, "GET", project_path(emu, "/2/yolov8")).json()["export"]["link"]
    archive = zipfile.ZipFile(io.BytesIO(requests.get(link, timeout=10).content))
    assert f"nc: {len(emu.dataset.classes)}" in archive.read("data.yaml").decode()
    label_files = [n for n in archive.namelist() if n.endswith(".txt") and "/labels/" in n]
    assert len(label_files) == 12
    for name in label_files:
        for line in archive.read(name).decode().splitlines():
            values = [float(v) for v in line.split()[1:]]
            assert all(0 <= v <= 1 for v in values)


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_export_images_are_recompressed_copies_with_the_originals_volume(roboflow_emulator, ratio):
    emu = roboflow_emulator(image_count=10, export_pending_polls=0, image_kb_min=60, image_kb_max=80,
                            png_fraction=0, export_size_ratio=ratio)
    link = call(emu, "GET", project_path(emu, "/2/coco")).json()["export"]["link"]
    archive = zipfile.ZipFile(io.BytesIO(requests.get(link, timeout=10).content))
    records = {export_file_name(r, 2): r for r in emu.dataset.version(2).records()}
    sizes = []
    for name in archive.namelist():
        record = records.get(name.rsplit("/", 1)[-1])
        if record is None:
            continue
        copy = archive.read(name)
        original = requests.get(details(emu, record.id).json()["image"]["urls"]["original"], timeout=10).content
        assert copy != original
        assert Image.open(io.BytesIO(copy)).size == (record.width, record.height)
        sizes.append(len(copy) / len(original))
    assert len(sizes) == 10
    assert all(abs(size - ratio) < 0.01 for size in sizes), sizes


def test_search_defaults_limit_cap_and_no_geometry(roboflow_emulator):
    emu = roboflow_emulator(image_count=300)
    default = call(emu, "POST", project_path(emu, "/search")).json()
    assert default["offset"] == 0 and default["total"] == 300
    assert len(default["results"]) == 50
    assert set(default["results"][0]) == {"id", "created", "mediaType"}
    capped = search(emu, limit=1000)
    assert len(capped.json()["results"]) == 250
    fields = ["id", "name", "annotations", "labels", "split", "tags", "owner", "created", "width", "height"]
    result = search(emu, limit=5, fields=fields).json()["results"][0]
    assert set(result) == {*fields, "mediaType"}
    assert set(result["annotations"]) == {"count", "classes"}
    assert result["created"] > 10**12, "project search reports creation in milliseconds"
    image = details(emu, result["id"]).json()["image"]
    boxes = image.get("annotation", {}).get("boxes", [])
    assert result["annotations"]["count"] == len(boxes)
    assert result["annotations"]["classes"] == dict(Counter(b["label"] for b in boxes))
    assert (result["width"], result["height"]) == (image["annotation"]["width"], image["annotation"]["height"])


def test_search_pages_are_stable_and_cover_every_image_once(roboflow_emulator):
    emu = roboflow_emulator(image_count=130)
    assert list_by_offset(emu, limit=40) == emu.dataset.image_ids
    assert list_by_offset(emu, limit=40) == emu.dataset.image_ids


def test_search_filters_tag_split_class_batch(roboflow_emulator):
    emu = roboflow_emulator(image_count=120)
    records = [emu.dataset.image(i) for i in emu.dataset.image_ids]
    tag = records[0].tags[0] if records[0].tags else "night"
    label = emu.dataset.classes[0]
    expectations = {
        "tag": ({"tag": tag}, lambda r: tag in r.tags),
        "split": ({"split": "valid"}, lambda r: r.split == "valid"),
        "class_name": ({"class_name": label}, lambda r: label in r.annotation_classes),
        "batch false ignored": ({"batch": False}, lambda r: True),
        "batch_id": ({"batch_id": records[0].batch_id}, lambda r: r.batch_id == records[0].batch_id),
    }
    for name, (body, predicate) in expectations.items():
        expected = [r.id for r in records if predicate(r)]
        response = search(emu, limit=250, **body).json()
        assert [r["id"] for r in response["results"]] == expected, name
        assert response["total"] == len(expected), name
        assert 0 < len(expected), name
    assert search(emu, in_dataset=True).json()["total"] == 120
    ranked = [r["id"] for r in search(emu, prompt="a forklift at night", limit=250).json()["results"]]
    assert sorted(ranked) == sorted(emu.dataset.image_ids) and ranked != emu.dataset.image_ids
    assert search(emu, mediaTypes=["video"]).json()["results"] == []


def test_search_rejects_malformed_bodies(roboflow_emulator):
    emu = roboflow_emulator(image_count=5)
    bad_json = requests.post(
        emu.api_url + project_path(emu, "/search"), params={"api_key": KEY}, data=b'{"limit": 125,}', timeout=5
    )
    assert bad_json.status_code == 400
    assert search(emu, limit="many").status_code == 400
    assert search(emu, fields="id").status_code == 400


def test_search_v1_tokens_cover_every_image_exactly_once(roboflow_emulator):
    emu = roboflow_emulator(image_count=230, search_v1_max_page_size=100)
    ids, pages = list_by_token(emu, f"project:{emu.config.project} *", page_size=500, project="ignored")
    assert ids == emu.dataset.image_ids
    assert [len(p["results"]) for p in pages] == [100, 100, 30], "pageSize is clamped"
    assert pages[-1]["continuationToken"] is None
    assert all(p["total"] == 230 for p in pages)
    result = pages[0]["results"][0]
    expected_data = {"split": emu.dataset.image(result["id"]).split, "inDataset": True}
    assert result["projectData"] == {emu.dataset.project_internal_id: expected_data}


def test_search_v1_scoping_lives_in_the_query_only(roboflow_emulator):
    emu = roboflow_emulator(image_count=40, orphan_images=3)
    workspace_wide, _ = list_by_token(emu, "*", project=emu.config.project)
    assert set(workspace_wide) == set(emu.dataset.image_ids) | set(emu.dataset.orphan_ids)
    orphans, _ = list_by_token(emu, "project:false *")
    assert orphans == emu.dataset.orphan_ids
    other, pages = list_by_token(emu, "project:someone-else *")
    assert other == [] and pages[0]["total"] == 0
    tagged, _ = list_by_token(emu, f'project:{emu.config.project} tag:"tag with space" split:train')
    expected = [
        i for i in emu.dataset.image_ids
        if "tag with space" in emu.dataset.image(i).tags and emu.dataset.image(i).split == "train"
    ]  # fmt: skip
    assert tagged == expected and expected
    fields = ["tags", "width", "height", "filename", "aspectRatio", "split", "owner"]
    response = call(
        emu,
        "POST",
        f"/{emu.config.workspace}/search/v1",
        json={"query": f"project:{emu.config.project}", "fields": fields, "pageSize": 1},
    )
    result = response.json()["results"][0]
    record = emu.dataset.image(result["id"])
    assert (result["filename"], result["width"], result["owner"]) == (record.name, record.width, record.owner)
    assert result["aspectRatio"] == pytest.approx(record.width / record.height, abs=1e-3)


def test_search_v1_rejects_bad_tokens_and_queries(roboflow_emulator):
    emu = roboflow_emulator(image_count=10)
    path = f"/{emu.config.workspace}/search/v1"
    assert call(emu, "POST", path, json={"query": "*", "continuationToken": "garbage"}).status_code == 400
    assert call(emu, "POST", path, json={"pageSize": 5}).status_code == 400
    first = call(emu, "POST", path, json={"query": "*", "pageSize": 2}).json()
    other_query = {"query": "tag:night", "continuationToken": first["continuationToken"]}
    assert call(emu, "POST", path, json=other_query).status_code == 400


def test_search_v1_token_survives_deletions_between_pages(roboflow_emulator):
    emu = roboflow_emulator(image_count=60)
    path = f"/{emu.config.workspace}/search/v1"
    query = f"project:{emu.config.project} *"
    first = call(emu, "POST", path, json={"query": query, "pageSize": 20}).json()
    last_seen = first["results"][-1]["id"]
    emu.dataset.delete_image(last_seen)
    doomed = emu.dataset.image_ids[25]
    emu.dataset.delete_image(doomed)
    ids = [r["id"] for r in first["results"]]
    token = first["continuationToken"]
    while token:
        page = call(emu, "POST", path, json={"query": query, "pageSize": 20, "continuationToken": token}).json()
        ids += [r["id"] for r in page["results"]]
        token = page["continuationToken"]
    assert len(ids) == len(set(ids)) == 59
    assert set(ids) == set(emu.dataset.image_ids) | {last_seen}


def test_image_details_shape_with_centre_pixel_boxes(roboflow_emulator):
    emu = roboflow_emulator(image_count=40)
    seen_boxes = 0
    for image_id in emu.dataset.image_ids:
        image = details(emu, image_id).json()["image"]
        assert {"id", "name", "labels", "split", "tags", "created", "urls", "embedding"} <= set(image)
        assert image["id"] == image_id
        assert len(image["embedding"]) == 512
        assert "owner" not in image
        assert set(image["urls"]) == {"original", "thumb", "annotation"}
        assert image["urls"]["original"].startswith(emu.cdn_url + "/")
        assert image["created"] < 10**11, "details report creation in seconds"
        annotation = image.get("annotation")
        if annotation is None:
            continue
        assert set(annotation) == {"key", "width", "height", "boxes"}
        for box in annotation["boxes"]:
            seen_boxes += 1
            assert set(box) == {"label", "x", "y", "width", "height"}
            assert 0 <= box["x"] - box["width"] / 2 and box["x"] + box["width"] / 2 <= annotation["width"]
            assert 0 <= box["y"] - box["height"] / 2 and box["y"] + box["height"] / 2 <= annotation["height"]
        assert image["labels"] == sorted({b["label"] for b in annotation["boxes"]})
    assert seen_boxes > 40
    missing = details(emu, "A" * 20)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Image not found."}
    annotated = next(i for i in emu.dataset.image_ids if emu.dataset.image(i).boxes)
    image = details(emu, annotated).json()["image"]
    assert requests.get(image["urls"]["annotation"], timeout=5).json() == image["annotation"]


def test_switches_for_search_created_unit_and_owner_in_details(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, search_created_unit="s", details_include_owner=True)
    result = search(emu).json()["results"][0]
    assert result["created"] == emu.dataset.image(result["id"]).created_ms // 1000
    assert details(emu, result["id"]).json()["image"]["owner"] == emu.dataset.owner


def test_instance_segmentation_boxes_enclose_their_polygons(roboflow_emulator):
    emu = roboflow_emulator(image_count=20, project_type="instance-segmentation")
    polygons = 0
    for image_id in emu.dataset.image_ids:
        for box in details(emu, image_id).json()["image"].get("annotation", {}).get("boxes", []):
            polygons += 1
            xs = [p["x"] for p in box["points"]]
            ys = [p["y"] for p in box["points"]]
            assert len(xs) >= 3
            assert box["x"] - box["width"] / 2 == pytest.approx(min(xs), abs=0.02)
            assert box["x"] + box["width"] / 2 == pytest.approx(max(xs), abs=0.02)
            assert box["y"] - box["height"] / 2 == pytest.approx(min(ys), abs=0.02)
            assert box["y"] + box["height"] / 2 == pytest.approx(max(ys), abs=0.02)
    assert polygons > 10


def test_cdn_serves_unique_decodable_images_with_sniffed_types(roboflow_emulator):
    emu = roboflow_emulator(image_count=60, png_fraction=0.25)
    digests = set()
    types = Counter()
    for image_id in emu.dataset.image_ids:
        image = details(emu, image_id).json()["image"]
        original = requests.get(image["urls"]["original"], timeout=5)
        assert original.status_code == 200
        assert int(original.headers["Content-Length"]) == len(original.content)
        assert original.headers["Content-Type"] == sniff_content_type(original.content)
        types[original.headers["Content-Type"]] += 1
        decoded = Image.open(io.BytesIO(original.content))
        decoded.load()
        assert {"image/png": "PNG", "image/jpeg": "JPEG"}[original.headers["Content-Type"]] == decoded.format
        if "annotation" in image:
            assert decoded.size == (image["annotation"]["width"], image["annotation"]["height"])
        digests.add(hashlib.sha256(original.content).hexdigest())
        thumb = requests.get(image["urls"]["thumb"], timeout=5)
        assert thumb.headers["Content-Type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert len(digests) == 60
    assert types["image/png"] > 0 and types["image/jpeg"] > 0
    assert requests.get(f"{emu.cdn_url}/{emu.dataset.owner}/{'B' * 20}/original.jpg", timeout=5).status_code == 404
    head = requests.head(emu.original_url(emu.dataset.image_ids[0]), timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(requests.get(emu.original_url(emu.dataset.image_ids[0])).content)


def test_image_sizes_follow_the_configured_range(roboflow_emulator):
    emu = roboflow_emulator(image_count=15, image_kb_min=100, image_kb_max=300)
    sizes = []
    for image_id in emu.dataset.image_ids:
        sizes.append(len(requests.get(emu.original_url(image_id), timeout=5).content))
    assert all(100 * 1024 <= size <= 300 * 1024 + 64 * 1024 for size in sizes)
    assert len(set(sizes)) == 15


def test_hundred_thousand_images_list_and_serve_quickly_in_little_memory(roboflow_emulator):
    tracemalloc.start()
    Dataset(EmulatorConfig(image_count=100_000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * 1024 * 1024
    started = time.monotonic()
    emu = roboflow_emulator(image_count=100_000)
    first = search(emu, limit=250).json()
    last = search(emu, offset=99_900, limit=250).json()
    assert first["total"] == 100_000 and len(last["results"]) == 100
    assert last["results"][-1]["id"] == emu.dataset.image_ids[-1]
    page = call(
        emu,
        "POST",
        f"/{emu.config.workspace}/search/v1",
        json={"query": f"project:{emu.config.project} *", "pageSize": 100},
    ).json()
    following = call(
        emu,
        "POST",
        f"/{emu.config.workspace}/search/v1",
        json={"query": f"project:{emu.config.project} *", "continuationToken": page["continuationToken"]},
    )
    assert following.json()["results"][0]["id"] == emu.dataset.image_ids[100]
    for image_id in last["results"][-3:]:
        image = details(emu, image_id["id"]).json()["image"]
        Image.open(io.BytesIO(requests.get(image["urls"]["original"], timeout=5).content)).load()
    assert call(emu, "GET", project_path(emu)).json()["project"]["images"] == 100_000
    assert time.monotonic() - started < 15


def test_same_seed_same_project_other_seed_other_project():
    first, second = Dataset(EmulatorConfig(image_count=50, seed=3)), Dataset(EmulatorConfig(image_count=50, seed=3))
    other = Dataset(EmulatorConfig(image_count=50, seed=4))
    assert first.image_ids == second.image_ids
    assert [first.image(i) for i in first.image_ids] == [second.image(i) for i in second.image_ids]
    assert not set(first.image_ids) & set(other.image_ids)
    assert all(re.fullmatch(r"[A-Za-z0-9]{20}", i) for i in first.image_ids)
    assert len({first.image(i).owner for i in first.image_ids}) == 1


def test_odd_names_and_hostile_class_names_round_trip(roboflow_emulator):
    emu = roboflow_emulator(image_count=80, odd_name_fraction=1.0, hostile_class_names=True)
    names = {details(emu, i).json()["image"]["name"] for i in emu.dataset.image_ids}
    assert {"../evil.jpg", "a/b.jpg"} & names
    assert any(len(name) == 300 for name in names)
    assert any('"' in name for name in names) and any(not name.isascii() for name in names)
    classes = call(emu, "GET", project_path(emu)).json()["project"]["classes"]
    assert any("'" in name or '"' in name for name in classes)
    assert set(classes) == set(emu.dataset.classes)
    hostile = next(name for name in classes if not name.replace(" ", "").isalnum() and classes[name])
    with_hostile = [i for i in emu.dataset.image_ids if hostile in emu.dataset.image(i).annotation_classes]
    found = search(emu, class_name=hostile, limit=250).json()
    assert [r["id"] for r in found["results"]] == with_hostile and with_hostile


def test_dataset_mutations_show_up_everywhere_but_in_versions(roboflow_emulator):
    emu = roboflow_emulator(image_count=30, versions=1)
    deleted, relabelled = emu.dataset.image_ids[3], emu.dataset.image_ids[4]
    owner = emu.dataset.owner
    label = emu.dataset.classes[1]
    old_label_boxes = sum(emu.dataset.image(i).annotation_classes.get(label, 0) for i in (deleted, relabelled))
    before = call(emu, "GET", project_path(emu)).json()
    emu.dataset.delete_image(deleted)
    new_boxes = [{"label": label, "x": 20, "y": 20, "width": 10, "height": 10}] * 3
    emu.dataset.set_boxes(relabelled, new_boxes)
    after = call(emu, "GET", project_path(emu)).json()
    assert after["project"]["images"] == before["project"]["images"] - 1
    assert after["versions"][0]["images"] == before["versions"][0]["images"] == 30
    assert details(emu, deleted).status_code == 404
    assert requests.get(f"{emu.cdn_url}/{owner}/{deleted}/original.jpg", timeout=5).status_code == 404
    assert deleted not in list_by_offset(emu)
    assert details(emu, relabelled).json()["image"]["annotation"]["boxes"] == new_boxes
    assert after["project"]["classes"][label] == before["project"]["classes"][label] - old_label_boxes + 3
    result = search(emu, fields=["id", "annotations"], limit=10).json()["results"]
    assert next(r for r in result if r["id"] == relabelled)["annotations"] == {
        "count": 3, "classes": {emu.dataset.classes[1]: 3}
    }  # fmt: skip


def test_control_routes_expose_counters_faults_and_mutations(roboflow_emulator):
    emu = roboflow_emulator(image_count=10)
    search(emu)
    counters = requests.get(emu.api_url + "/__emulator/counters", timeout=5).json()
    assert counters["search"] == 1 and counters["search:200"] == 1
    changed = requests.post(emu.api_url + "/__emulator/faults", json={"throttle_count": 1}, timeout=5)
    assert changed.json()["throttle_count"] == 1
    assert search(emu).status_code == 429
    requests.patch(emu.cdn_url + "/__emulator/faults", json={"slow_seconds": 0.1}, timeout=5)
    assert (emu.faults.throttle_count, emu.faults.slow_seconds) == (1, 0.1), "PATCH merges"
    requests.post(emu.cdn_url + "/__emulator/faults", json={"server_error_count": 1}, timeout=5)
    assert emu.faults.throttle_count == 0, "POST replaces"
    assert search(emu).status_code >= 500
    assert search(emu).status_code == 200
    targets = requests.get(emu.api_url + "/__emulator/targets", timeout=5).json()
    assert set(targets) >= {"deleted_after_listing", "eventually_consistent", "undecodable", "count_gap"}
    image_id = emu.dataset.image_ids[0]
    requests.post(f"{emu.api_url}/__emulator/images/{image_id}/delete", timeout=5)
    assert details(emu, image_id).status_code == 404
    requests.delete(emu.api_url + "/__emulator/counters", timeout=5)
    assert emu.counters() == {}


def test_cli_prints_urls_serves_and_exits_cleanly_on_sigterm(tmp_path):
    command = [sys.executable, "-m", "pipeline.testing.roboflow_emulator", "--port", "0", "--images", "25",
               "--seed", "3", "--api-key", "cli_key_abc", "--workspace", "w", "--project", "p",
               "--rate-limit", "1000", "--api-latency-ms", "1", "--throttle-count", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the CLI printed nothing"
        urls = json.loads(process.stdout.readline())
        assert set(urls) == {"api_url", "cdn_url"}
        assert requests.get(urls["api_url"] + "/w/p", params={"api_key": "cli_key_abc"}, timeout=5).status_code == 429
        project = requests.get(urls["api_url"] + "/w/p", params={"api_key": "cli_key_abc"}, timeout=5).json()
        assert project["project"]["images"] == 25
        assert requests.get(urls["api_url"] + "/__emulator/counters", timeout=5).json()["project"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "cli_key_abc" not in process.stdout.read() + process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    help_text = subprocess.run([*command[:3], "--help"], capture_output=True, text=True, timeout=20).stdout
    for flag in ("--images", "--rate-limit", "--api-latency-ms", "--cdn-latency-ms", "--image-kb-min",
                 "--undecodable", "--count-gap", "--stuck-export"):  # fmt: skip
        assert flag in help_text


# ---- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_retry_after", [True, False])
def test_throttle_count_gives_429s_then_recovers(roboflow_emulator, with_retry_after):
    faults = FaultConfig(throttle_count=2, retry_after_fraction=1.0 if with_retry_after else 0.0, retry_after_seconds=3)
    emu = roboflow_emulator(image_count=10, faults=faults)
    responses = [search(emu) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 200]
    assert responses[0].json() == {
        "error": {"message": "Rate limit exceeded", "status": 429, "type": "RateLimitException"}
    }
    assert responses[0].headers.get("Retry-After") == ("3" if with_retry_after else None)
    assert emu.counters()["fault:throttle"] == 2


def test_throttle_rate_hits_some_requests_on_the_chosen_routes_only(roboflow_emulator):
    emu = roboflow_emulator(image_count=10, faults=FaultConfig(throttle_rate=0.5, throttle_routes=("search",)))
    statuses = Counter(search(emu).status_code for _ in range(40))
    assert statuses[429] > 5 and statuses[200] > 5
    assert all(details(emu, i).status_code == 200 for i in emu.dataset.image_ids)


def test_token_bucket_rate_limit_per_key(roboflow_emulator):
    faults = FaultConfig(rate_limit_per_s=4, rate_limit_burst=3, rate_limit_retry_after="all")
    emu = roboflow_emulator(image_count=5, extra_api_keys=("second_key_x",), faults=faults)
    statuses = [call(emu, "GET", project_path(emu)).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    limited = call(emu, "GET", project_path(emu))
    assert limited.json()["error"]["type"] == "RateLimitException"
    assert limited.headers["Retry-After"] == "1"
    assert call(emu, "GET", project_path(emu), key="second_key_x").status_code == 200
    time.sleep(0.3)
    assert call(emu, "GET", project_path(emu)).status_code == 200
    assert emu.counters()["fault:rate_limit"] >= 2


def burst_of(emu) -> tuple[list[int], float]:
    """Statuses of 30 calls sent back to back, and the seconds they took."""
    start = time.monotonic()
    statuses = [call(emu, "GET", project_path(emu)).status_code for _ in range(30)]
    return statuses, time.monotonic() - start


def test_rate_limit_burst_defaults_to_a_tenth_of_a_second_of_rate(roboflow_emulator):
    hard, took = burst_of(roboflow_emulator(image_count=3, faults=FaultConfig(rate_limit_per_s=20)))
    assert hard[:2] == [200, 200] and hard.count(200) <= 2 + 20 * took + 1  # 2 saved up, then the refill only
    lenient, _ = burst_of(roboflow_emulator(image_count=3, faults=FaultConfig(rate_limit_per_s=20,
                                                                               rate_limit_burst_s=10)))
    assert lenient == [200] * 30


@pytest.mark.parametrize(("which", "low", "high"), [("all", 1.0, 1.0), ("none", 0.0, 0.0), ("half", 0.2, 0.8)])
def test_which_rate_limit_429s_carry_retry_after(roboflow_emulator, which, low, high):
    emu = roboflow_emulator(image_count=3, faults=FaultConfig(rate_limit_per_s=1, rate_limit_retry_after=which,
                                                              retry_after_fraction=0.5))
    limited = [r for r in (call(emu, "GET", project_path(emu)) for _ in range(40)) if r.status_code == 429]
    assert len(limited) >= 35
    share = sum("Retry-After" in r.headers for r in limited) / len(limited)
    assert low <= share <= high


def test_rate_limit_drops_after_n_calls_and_the_timeline_shows_it(roboflow_emulator):
    faults = FaultConfig(rate_limit_per_s=1000, rate_limit_change_per_s=2, rate_limit_change_after_calls=20)
    emu = roboflow_emulator(image_count=3, faults=faults)
    statuses = [call(emu, "GET", project_path(emu)).status_code for _ in range(40)]
    assert statuses[:20] == [200] * 20 and statuses[20:].count(429) >= 17
    timeline = emu.timeline()
    assert timeline[-1]["limit"] == 2
    assert sum(s["passed"] for s in timeline) == statuses.count(200)
    assert sum(s["limited"] for s in timeline) == statuses.count(429)


def test_rate_limit_rises_after_t_seconds(roboflow_emulator):
    faults = FaultConfig(rate_limit_per_s=1, rate_limit_burst=1, rate_limit_change_per_s=1000,
                         rate_limit_change_after_s=0.3)
    emu = roboflow_emulator(image_count=3, faults=faults)
    assert [call(emu, "GET", project_path(emu)).status_code for _ in range(2)] == [200, 429]
    time.sleep(0.35)
    paced = []  # 200/s: far over the old limit, under the new one whatever the machine's speed
    for _ in range(30):
        time.sleep(0.005)
        paced.append(call(emu, "GET", project_path(emu)).status_code)
    assert paced == [200] * 30


@pytest.mark.parametrize("bad", [dict(rate_limit_burst_s=0), dict(rate_limit_retry_after="some"),
                                 dict(rate_limit_per_s=5, rate_limit_change_per_s=2),
                                 dict(rate_limit_change_per_s=-1, rate_limit_change_after_calls=3)])
def test_rate_limit_switches_are_validated(bad):
    with pytest.raises(ValueError):
        FaultConfig(**bad)


def test_server_errors_are_json_500_or_html_502_503_then_recover(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(server_error_count=12))
    responses = [call(emu, "GET", project_path(emu)) for _ in range(12)]
    by_status = {r.status_code: r for r in responses}
    assert set(by_status) == {500, 502, 503}
    assert by_status[500].json()["error"]["status"] == 500
    assert by_status[502].headers["Content-Type"].startswith("text/html")
    assert call(emu, "GET", project_path(emu)).status_code == 200
    cdn_emu = roboflow_emulator(image_count=5, faults=FaultConfig(server_error_count=1, server_error_routes=("cdn",)))
    url = cdn_emu.original_url(cdn_emu.dataset.image_ids[0])
    assert requests.get(url, timeout=5).status_code >= 500
    assert requests.get(url, timeout=5).status_code == 200


def test_connection_reset_aborts_without_a_response_and_retry_works(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(reset_count=1, reset_routes=("cdn",)))
    url = emu.original_url(emu.dataset.image_ids[0])
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    assert requests.get(url, timeout=5).status_code == 200
    assert emu.counters()["fault:reset"] == 1
    emu.faults = FaultConfig(reset_count=1)
    with requests.Session() as session:
        with pytest.raises(requests.ConnectionError):
            session.get(emu.api_url + project_path(emu), params={"api_key": KEY}, timeout=5)
        assert session.get(emu.api_url + project_path(emu), params={"api_key": KEY}, timeout=5).status_code == 200


def test_slow_responses_delay_then_stop(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(slow_count=1, slow_seconds=2.0))
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.get(emu.api_url + project_path(emu), params={"api_key": KEY}, timeout=0.3)
    assert time.monotonic() - started >= 0.25
    started = time.monotonic()
    assert call(emu, "GET", project_path(emu)).status_code == 200
    assert time.monotonic() - started < 1.5
    assert emu.counters()["fault:slow"] == 1


def test_truncated_body_sends_full_length_then_closes(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(truncate_count=2))
    url = emu.original_url(emu.dataset.image_ids[0])
    head, body = raw_get(url)
    declared = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert 0 < len(body) < declared
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=5)
    full = requests.get(url, timeout=5)
    assert len(full.content) == declared == int(full.headers["Content-Length"])
    assert emu.counters()["fault:truncate"] == 2


def test_missing_content_length_is_close_delimited(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(no_content_length_count=1))
    url = emu.original_url(emu.dataset.image_ids[0])
    head, body = raw_get(url)
    assert b"Content-Length" not in head
    Image.open(io.BytesIO(body)).load()
    assert "Content-Length" in requests.get(url, timeout=5).headers


def test_unstable_offset_order_duplicates_and_misses_images(roboflow_emulator):
    emu = roboflow_emulator(image_count=200, faults=FaultConfig(unstable_order_rate=1.0, unstable_order_window=15))
    runs = [list_by_offset(emu, limit=50) for _ in range(3)]
    for ids in runs:
        assert len(ids) == 200
        assert len(set(ids)) < 200, "some images repeat across pages"
        assert set(emu.dataset.image_ids) - set(ids), "some images are never listed"
    assert len({tuple(ids) for ids in runs}) > 1, "each run sees a different order"
    emu.faults = FaultConfig()
    assert list_by_offset(emu, limit=50) == emu.dataset.image_ids
    emu.faults = FaultConfig(unstable_order_rate=1.0)
    tokens, _ = list_by_token(emu, f"project:{emu.config.project} *")
    assert tokens == emu.dataset.image_ids, "search/v1 keyset paging is unaffected"


def test_undefined_original_urls_for_a_fraction_of_images(roboflow_emulator):
    emu = roboflow_emulator(image_count=60, faults=FaultConfig(undefined_url_rate=0.3))
    undefined = []
    for result in search(emu, limit=100, fields=["id", "owner"]).json()["results"]:
        original = details(emu, result["id"]).json()["image"]["urls"]["original"]
        if "/undefined/" in original:
            undefined.append(result["id"])
            assert requests.get(original, timeout=5).status_code == 404
            rebuilt = f"{emu.cdn_url}/{result['owner']}/{result['id']}/original.jpg"
            assert requests.get(rebuilt, timeout=5).status_code == 200
    assert 5 < len(undefined) < 40
    assert undefined == emu.fault_targets()["undefined_url"]
    assert [details(emu, i).json()["image"]["urls"]["original"] for i in undefined[:3]] == [
        details(emu, i).json()["image"]["urls"]["original"] for i in undefined[:3]
    ]


def test_error_shape_switches_per_route(roboflow_emulator):
    faults = FaultConfig(error_style={"image_details": "object", "search": "string"})
    emu = roboflow_emulator(image_count=5, faults=faults)
    missing = details(emu, "C" * 20).json()
    assert missing["error"]["message"] == "Image not found." and missing["error"]["type"]
    assert search(emu, limit="x").json() == {"error": "limit must be a number"}
    emu.faults = FaultConfig(throttle_count=1, error_style={"project": "string"})
    assert call(emu, "GET", project_path(emu)).json() == {"error": "Rate limit exceeded"}


def test_images_deleted_between_listing_and_details_stay_gone(roboflow_emulator):
    emu = roboflow_emulator(image_count=40, faults=FaultConfig(deleted_after_listing=3))
    gone = emu.fault_targets()["deleted_after_listing"]
    assert len(gone) == 3
    listed = list_by_offset(emu)
    assert set(gone) <= set(listed) and len(listed) == 40
    for image_id in gone:
        for _ in range(2):
            assert details(emu, image_id).json() == {"error": "Image not found."}
            cdn_url = f"{emu.cdn_url}/{emu.dataset.owner}/{image_id}/original.jpg"
            assert requests.get(cdn_url, timeout=5).status_code == 404


def test_eventually_consistent_images_404_then_heal(roboflow_emulator):
    emu = roboflow_emulator(image_count=20, faults=FaultConfig(eventually_consistent=2, eventual_tries=2))
    targets = emu.fault_targets()["eventually_consistent"]
    assert len(targets) == 2
    for image_id in targets:
        first, second, third = (details(emu, image_id) for _ in range(3))
        assert first.status_code == second.status_code == 404
        assert first.json()["error"]["type"] == "InvalidParameterException"
        assert first.json()["error"]["message"] == "Image not found in dataset."
        assert third.status_code == 200 and third.json()["image"]["id"] == image_id
    others = [i for i in emu.dataset.image_ids if i not in targets]
    assert all(details(emu, i).status_code == 200 for i in others)


def test_undecodable_images_are_permanently_corrupt(roboflow_emulator):
    emu = roboflow_emulator(image_count=20, faults=FaultConfig(undecodable=2))
    broken = emu.fault_targets()["undecodable"]
    for image_id in broken:
        responses = [requests.get(emu.original_url(image_id), timeout=5) for _ in range(2)]
        assert responses[0].content == responses[1].content
        assert responses[0].headers["Content-Type"] == "image/jpeg"
        with pytest.raises(Exception):  # noqa: B017 - Pillow raises several types for garbage
            Image.open(io.BytesIO(responses[0].content)).load()
    healthy = next(i for i in emu.dataset.image_ids if i not in broken)
    Image.open(io.BytesIO(requests.get(emu.original_url(healthy), timeout=5).content)).load()


def test_stuck_export_answers_202_forever_and_progress_can_exceed_one(roboflow_emulator):
    emu = roboflow_emulator(image_count=10, export_pending_polls=1, faults=FaultConfig(stuck_export=True))
    polls = [call(emu, "GET", project_path(emu, "/1/coco")) for _ in range(8)]
    assert {p.status_code for p in polls} == {202}
    assert len({p.json()["progress"] for p in polls}) == 1
    emu.faults = FaultConfig(stuck_export=True, export_progress_over_one=True)
    assert call(emu, "GET", project_path(emu, "/1/coco")).json()["progress"] > 1
    emu.faults = FaultConfig()
    statuses = [call(emu, "GET", project_path(emu, "/1/coco")).status_code for _ in range(2)]
    assert statuses == [202, 200], "once unstuck the export finishes after its normal polls"


def test_export_progress_goes_past_one_before_finishing(roboflow_emulator):
    emu = roboflow_emulator(image_count=10, export_pending_polls=3, faults=FaultConfig(export_progress_over_one=True))
    progress = [call(emu, "GET", project_path(emu, "/1/coco")).json().get("progress") for _ in range(3)]
    assert max(progress) > 1
    assert call(emu, "GET", project_path(emu, "/1/coco")).status_code == 200


def test_offset_cap_silently_ends_the_listing(roboflow_emulator):
    emu = roboflow_emulator(image_count=200, faults=FaultConfig(offset_cap=100))
    beyond = search(emu, offset=100, limit=50).json()
    assert beyond["results"] == [] and beyond["total"] == 200
    assert len(search(emu, offset=60, limit=100).json()["results"]) == 40
    assert len(list_by_offset(emu, limit=50)) == 100


def test_count_gap_totals_exceed_what_listings_return(roboflow_emulator):
    emu = roboflow_emulator(image_count=50, faults=FaultConfig(count_gap=4))
    hidden = emu.fault_targets()["count_gap"]
    listed = list_by_offset(emu, limit=20)
    assert search(emu).json()["total"] == 50
    assert len(listed) == 46 and not set(hidden) & set(listed)
    by_token, pages = list_by_token(emu, f"project:{emu.config.project} *")
    assert pages[0]["total"] == 50 and sorted(by_token) == sorted(listed)
    assert all(details(emu, i).status_code == 200 for i in hidden)
    assert call(emu, "GET", project_path(emu)).json()["project"]["images"] == 50


def test_api_and_cdn_latency_are_separate(roboflow_emulator):
    emu = roboflow_emulator(image_count=5, faults=FaultConfig(api_latency_ms=250, cdn_latency_ms=0))
    started = time.monotonic()
    call(emu, "GET", project_path(emu))
    api_seconds = time.monotonic() - started
    started = time.monotonic()
    requests.get(emu.original_url(emu.dataset.image_ids[0]), timeout=5)
    cdn_seconds = time.monotonic() - started
    assert api_seconds >= 0.25 > cdn_seconds
    emu.faults = FaultConfig(cdn_latency_ms=250)
    started = time.monotonic()
    requests.get(emu.original_url(emu.dataset.image_ids[0]), timeout=5)
    assert time.monotonic() - started >= 0.25


def test_faults_switch_at_runtime_and_counts_start_over(roboflow_emulator):
    emu = roboflow_emulator(image_count=5)
    assert search(emu).status_code == 200
    emu.set_faults(throttle_count=1)
    assert search(emu).status_code == 429
    assert search(emu).status_code == 200
    emu.set_faults(emu.faults)
    assert search(emu).status_code == 429
    with pytest.raises(ValueError):
        FaultConfig(throttle_rate=2)
    with pytest.raises(ValueError):
        FaultConfig(reset_routes=("nowhere",))
