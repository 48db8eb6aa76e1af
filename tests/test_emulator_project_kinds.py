"""The emulator's project types and formats (issue 14): what the wire carries, read as a client does."""

from __future__ import annotations

import requests

from pipeline.testing.roboflow_emulator.dataset import KEYPOINT_NAMES


def get(emu, path: str) -> requests.Response:
    url = f"{emu.api_url}/{emu.config.workspace}/{emu.config.project}{path}"
    return requests.get(url, headers={"Authorization": f"Bearer {emu.config.api_key}"}, timeout=10)


def details(emu, image_id: str) -> dict:
    return get(emu, f"/images/{image_id}").json()["image"]


def test_keypoint_project_versions_carry_skeletons_and_boxes_carry_keypoints(roboflow_emulator):
    emu = roboflow_emulator(image_count=12, project_type="keypoint-detection", seed=4)
    project = get(emu, "").json()["project"]
    assert project["type"] == "keypoint-detection" and project["multilabel"] is False
    skeletons = get(emu, "/1").json()["version"]["skeletons"]
    assert set(skeletons) == set(emu.dataset.classes)
    skeleton = next(iter(skeletons.values()))
    assert [v["name"] for v in skeleton["vertices"]] == list(KEYPOINT_NAMES)
    assert all({"from", "to"} <= set(edge) for edge in skeleton["edges"])
    boxes = [b for i in emu.dataset.image_ids for b in details(emu, i).get("annotation", {}).get("boxes", [])]
    assert boxes and all(len(b["keypoints"]) == len(KEYPOINT_NAMES) for b in boxes)
    assert {k["class"] for b in boxes for k in b["keypoints"]} == set(KEYPOINT_NAMES)
    detection = roboflow_emulator(image_count=3, seed=4)
    assert "skeletons" not in get(detection, "/1").json()["version"]


def test_semantic_masks_come_without_boxes_and_one_per_class(roboflow_emulator):
    emu = roboflow_emulator(image_count=10, project_type="semantic-segmentation", seed=5, empty_fraction=0)
    shapes = [details(emu, i)["annotation"]["boxes"] for i in emu.dataset.image_ids]
    assert all(shapes)
    for image_shapes in shapes:
        assert all(set(s) == {"label", "points"} and len(s["points"]) >= 3 for s in image_shapes)
        assert len({s["label"] for s in image_shapes}) == len(image_shapes)


def test_classification_labels_as_list_or_string_null_and_unlabelled_images(roboflow_emulator):
    emu = roboflow_emulator(image_count=30, project_type="classification", multilabel=True, seed=6)
    assert get(emu, "").json()["project"]["multilabel"] is True
    images = [details(emu, i) for i in emu.dataset.image_ids]
    assert any(len(d["labels"]) > 1 for d in images)
    assert any("annotation" not in d and d["labels"] == [] for d in images)  # never labelled
    assert all(d["user_metadata"]["frame"] >= 0 for d in images)
    single = roboflow_emulator(image_count=10, project_type="classification", labels_shape="string", seed=6)
    labelled = [details(single, i) for i in single.dataset.image_ids]
    assert any(isinstance(d["labels"], str) and d["labels"] for d in labelled)
    relabelled = single.dataset.image_ids[0]
    single.dataset.set_labels(relabelled, [single.dataset.classes[1]])
    assert details(single, relabelled)["labels"] == single.dataset.classes[1]


def test_every_format_is_served_with_its_content_type(roboflow_emulator):
    emu = roboflow_emulator(image_count=30, seed=21, png_fraction=0.15, other_format_fraction=0.7)
    seen = {}
    for image_id in emu.dataset.image_ids:
        response = requests.get(emu.original_url(image_id), timeout=10)
        assert response.url.endswith("/original.jpg")
        seen[emu.dataset.image(image_id).image_format] = response.headers["Content-Type"]
        assert int(response.headers["Content-Length"]) == len(response.content)
    assert seen == {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp",
                    "tiff": "image/tiff", "gif": "image/gif"}
