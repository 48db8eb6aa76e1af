"""The stand-ins as hard as the real services at their edges (issue 15), and the importer coping.

One test (or a pair) per numbered item: long request lines (1), private buckets (2), Roboflow refusing
the account mid-run (3), Storage's coded transient errors (4), KeyAlreadyExists (5), decimal sizes and
the effective limit (6), the multipart contentType field, check order and default cache-control (7),
racing uploads without upsert (8), and the edge's 414 (9, with 1).
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from storage3.exceptions import StorageApiError

from pipeline import main as importer
from pipeline.testing.roboflow_emulator import FaultConfig
from pipeline.testing.supabase_stack import StackFaults
from tests.importer import importer_args, run_import, start_import
from transforms.clients.roboflow import RoboflowClient, RoboflowStopped, clear_account_stops
from transforms.clients.supabase import SupabaseClient, storage_error
from transforms.core.convert import source_ref
from transforms.core.retry import RetryPolicy, TransientError
from transforms.dead_letters import read_dead_letters

BUCKET = "od-images"
DATASET = "eeeeeeee-0000-4000-8000-0000000000e5"
FAST_RETRY = RetryPolicy(max_attempts=12, base_delay=0.01, max_delay=0.05, max_elapsed=30)
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 100


@pytest.fixture
def stack(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'edges')")
    return clean_supabase


@pytest.fixture
def client(stack):
    sb = SupabaseClient(stack.url, stack.service_role_key, bucket=BUCKET, retry=FAST_RETRY)
    try:
        yield sb
    finally:
        sb.close()


def raw(stack, **kwargs) -> httpx.Client:
    key = stack.service_role_key
    return httpx.Client(base_url=stack.url, headers={"apikey": key, "Authorization": f"Bearer {key}"}, **kwargs)


def longest_request_line(counting: list[int]):
    """An httpx event hook recording each request line's length (method, target, version)."""

    def hook(request: httpx.Request) -> None:
        counting.append(len(request.method) + 1 + len(request.url.raw_path) + len(" HTTP/1.1"))

    return hook


# --- 1 and 9: request lines ----------------------------------------------------------------------


def test_a_request_line_over_8kb_is_414_like_kongs_nginx(stack):
    refs = [f"roboflow:{'x' * 20}{i:04d}@{DATASET}" for i in range(200)]
    with raw(stack) as http:
        too_long = http.get("/rest/v1/od_images", params={"select": "id", "source_ref": f"in.({','.join(refs)})"})
        short = http.get("/rest/v1/od_images", params={"select": "id", "source_ref": f"in.({','.join(refs[:50])})"})
    assert too_long.status_code == 414
    assert "414 Request-URI Too Large" in too_long.text
    assert short.status_code == 200


def test_lookups_and_deletes_of_long_id_lists_stay_under_the_limit(stack, client):
    """A 500-image batch lookup and a 200-id delete: several bounded requests instead of one refused one."""
    refs = [source_ref(DATASET, f"img{i:017d}") for i in range(500)]
    rows = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, ref)), "filename": f"{i}.jpg", "image_url": "u", "width": 1,
             "height": 1, "source": "import", "source_ref": ref, "storage_path": f"{DATASET}/roboflow/{i}.jpg",
             "file_hash": "h"} for i, ref in enumerate(refs)]
    client.upsert("od_images", rows, on_conflict="source_ref")
    lines: list[int] = []
    client._http.event_hooks["request"].append(longest_request_line(lines))

    found = client.existing_images(DATASET, refs)
    assert set(found) == set(refs)
    assert max(lines) <= 8192
    assert len(lines) > 2, "500 refs in one request line would be ~30 KB"

    lines.clear()
    client.delete_rows("od_images", id=[r["id"] for r in rows[:200]])
    assert max(lines) <= 8192
    assert stack.sql("select count(*) as n from od_images")[0]["n"] == 300


def test_stale_annotations_of_an_image_with_many_boxes_are_found_without_a_long_not_in(stack, client):
    image, cls = str(uuid.uuid4()), str(uuid.uuid4())
    stack.execute_sql(f"""
        insert into od_classes (id, name, dataset_id) values ('{cls}', 'box', '{DATASET}');
        insert into od_images (id, filename, image_url, width, height, source, source_ref)
            values ('{image}', 'a.jpg', 'u', 10, 10, 'import', 'many-boxes');
        insert into od_annotations (dataset_id, image_id, class_id, bbox_x, bbox_y, bbox_width, bbox_height,
                                    source_key)
            select '{DATASET}', '{image}', '{cls}', 0.1, 0.1, 0.1, 0.1, lpad(to_hex(g), 20, '0') || '#0'
            from generate_series(1, 450) g;""")
    keep = [f"{n:020x}#0" for n in range(1, 401)]
    lines: list[int] = []
    client._http.event_hooks["request"].append(longest_request_line(lines))

    client.delete_stale_annotations(DATASET, image, keep)

    assert max(lines) <= 8192
    left = {r["source_key"] for r in stack.sql("select source_key from od_annotations")}
    assert left == set(keep)


# --- 2: private buckets ---------------------------------------------------------------------------


def test_private_bucket_rows_get_a_url_that_works_and_a_public_bucket_the_public_url(
        roboflow_emulator, stack, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=4, seed=15, image_kb_max=6)
    code, summary, _ = run_import(emu, stack, tmp_path / "private", DATASET, monkeypatch=monkeypatch)
    assert code == 0
    urls = [r["image_url"] for r in stack.sql("select image_url from od_images")]
    assert len(urls) == 4
    with raw(stack) as http, httpx.Client() as anonymous:
        for url in urls:
            assert "/storage/v1/object/authenticated/od-images/" in url
            assert http.get(url).status_code == 200
            public = anonymous.get(url.replace("/authenticated/", "/public/"), headers={"apikey": stack.anon_key})
            assert public.json()["message"] == "Bucket not found"  # what the old public URL answered

        assert http.put(f"/storage/v1/bucket/{BUCKET}", json={"public": True}).status_code == 200
        code, summary, _ = run_import(emu, stack, tmp_path / "public", DATASET, monkeypatch=monkeypatch)
        assert (code, summary["changed"], summary["objects_uploaded"]) == (0, 4, 0)  # rows rewritten, no upload
        for (url,) in (tuple(r.values()) for r in stack.sql("select image_url from od_images")):
            assert "/storage/v1/object/public/od-images/" in url
            assert anonymous.get(url, headers={"apikey": stack.anon_key}).status_code == 200


# --- 3: Roboflow refuses the account -------------------------------------------------------------


def test_credits_running_out_mid_run_stop_it_with_one_line(roboflow_emulator, stack, tmp_path):
    emu = roboflow_emulator(image_count=40, seed=15, image_kb_max=6, faults=FaultConfig(
        account_refusal_status=402, account_refusal_after=6, account_refusal_routes=("image_details",)))
    child = start_import(emu, stack, tmp_path, DATASET, "--batch_size", "10", "--concurrency", "2", "--quiet")
    assert child.wait(120) == 1
    stderr = [line for line in (tmp_path / "stderr.txt").read_text().strip().splitlines()
              if " INFO pipeline: importing " not in line]  # the start line every run logs
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("error: Roboflow answered 402 (payment_required) during the import, so it stopped")
    assert "add credits" in stderr[0]

    details_402 = emu.counters().get("image_details:402", 0)
    assert 1 <= details_402 <= 2, "after the first 402 the other worker thread may have one call in flight, no more"
    summary = json.loads((tmp_path / "summary.json").read_text())
    letters = read_dead_letters(str(tmp_path / "dead"))
    imported = {r["rid"] for r in stack.sql(
        "select metadata->'roboflow'->>'image_id' as rid from od_images")}
    assert len(imported) == summary["imported"] <= 6
    assert len(letters) + len(imported) == 40
    assert {letter.image_id for letter in letters} | imported == set(_listed_ids(emu))
    assert {letter.error_type for letter in letters} <= {"payment_required", "not_attempted"}
    assert summary["stopped"]["status"] == 402 and summary["stopped"]["not_imported"] == 40 - len(imported)
    assert summary["complete"] is False


def _listed_ids(emu) -> list[str]:
    with httpx.Client() as http:
        body = {"offset": 0, "limit": 250, "fields": ["id"]}
        page = http.post(f"{emu.api_url}/{emu.config.workspace}/{emu.config.project}/search",
                         json=body, headers={"Authorization": f"Bearer {emu.config.api_key}"}).json()
    return [r["id"] for r in page["results"]]


def test_a_stopped_client_makes_no_more_calls_until_the_next_run(roboflow_emulator):
    emu = roboflow_emulator(image_count=3, seed=15, faults=FaultConfig(
        account_refusal_status=423, account_refusal_routes=("image_details",)))
    [first, second, *_] = _listed_ids(emu)
    client = RoboflowClient(emu.api_url, emu.config.api_key, retry=FAST_RETRY)
    try:
        with pytest.raises(RoboflowStopped) as met:
            client.image_details(emu.config.workspace, emu.config.project, first)
        with pytest.raises(RoboflowStopped) as skipped:
            client.image_details(emu.config.workspace, emu.config.project, second)
        assert (met.value.kind, skipped.value.kind) == ("usage_paused", "not_attempted")
        assert emu.counters().get("image_details", 0) == 1  # the second call sent nothing

        emu.set_faults(FaultConfig())  # usage resumed; the next run (same process, same cached client) works
        clear_account_stops()
        assert client.image_details(emu.config.workspace, emu.config.project, second)["image"]["id"] == second
    finally:
        client.close()


@pytest.mark.parametrize("status", [423, 402])
def test_a_refused_account_at_preflight_is_exit_2_with_the_fix(roboflow_emulator, stack, tmp_path, monkeypatch,
                                                              capsys, status):
    emu = roboflow_emulator(image_count=3, seed=15, faults=FaultConfig(account_refusal_status=status))
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    assert importer.run(importer_args(emu, stack, tmp_path, DATASET)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"({status} " in err[0]
    assert ("paused" if status == 423 else "credits") in err[0]
    assert stack.sql("select count(*) as n from od_classes where dataset_id is not null")[0]["n"] == 0


# --- 4: Storage's coded transient errors ---------------------------------------------------------


@pytest.mark.parametrize("status", [544, 503, 423, 429])
def test_storage_coded_errors_are_transient_and_uploads_heal(supabase_client, stack, client, status):
    if status == 429:
        stack.faults = StackFaults(storage_429_rate=1.0)
    else:
        stack.faults = StackFaults(storage_coded_error_rate=1.0, storage_coded_error_statuses=(status,))
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_(BUCKET).upload("coded.jpg", JPEG, {"content-type": "image/jpeg"})
    assert str(caught.value.status) == str(status)
    assert isinstance(storage_error(caught.value, "upload"), TransientError)

    stack.faults = (StackFaults(seed=3, storage_429_rate=0.5) if status == 429 else
                    StackFaults(seed=3, storage_coded_error_rate=0.5, storage_coded_error_statuses=(status,)))
    for n in range(6):
        assert client.upload(f"heal/{n}.jpg", JPEG, "image/jpeg") == "uploaded"
    assert sum(stack.counters()["faults"].values()) > 0
    assert len(stack.list_objects(BUCKET)) == 6


def test_storage_coded_errors_carry_the_status_in_an_http_400(stack):
    stack.faults = StackFaults(storage_coded_error_rate=1.0, storage_coded_error_statuses=(503,))
    with raw(stack) as http:
        wire = http.post(f"/storage/v1/object/{BUCKET}/a.jpg", files={"file": ("a.jpg", JPEG, "image/jpeg")})
    assert wire.status_code == 400
    assert wire.json()["statusCode"] == "503" and wire.json()["code"] == "SlowDown"


# --- 5: duplicate keys ----------------------------------------------------------------------------


def test_a_taken_key_is_KeyAlreadyExists_and_the_importer_counts_it_as_present(stack, client):
    assert client.upload("dup.jpg", JPEG, "image/jpeg") == "uploaded"
    with raw(stack) as http:
        wire = http.post(f"/storage/v1/object/{BUCKET}/dup.jpg", files={"file": ("dup.jpg", JPEG, "image/jpeg")})
    assert (wire.status_code, wire.json()["code"], wire.json()["statusCode"]) == (400, "KeyAlreadyExists", "409")
    assert client.upload("dup.jpg", JPEG, "image/jpeg") == "exists"


# --- 6: sizes ------------------------------------------------------------------------------------


def test_sizes_are_decimal_and_the_smallest_limit_applies(supabase_client, stack):
    storage = supabase_client.storage
    storage.create_bucket("kb", options={"public": False, "file_size_limit": "1KB"})
    assert stack.storage.get_bucket("kb")["file_size_limit"] == 1000
    storage.from_("kb").upload("ok.bin", b"x" * 1000, {"content-type": "image/jpeg"})
    with pytest.raises(StorageApiError) as caught:
        storage.from_("kb").upload("over.bin", b"x" * 1001, {"content-type": "image/jpeg"})
    assert str(caught.value.status) == "413"

    storage.create_bucket("roomy", options={"public": False, "file_size_limit": "1MB"})
    stack.storage.standard_upload_size_limit = 500
    try:
        with pytest.raises(StorageApiError) as caught:
            storage.from_("roomy").upload("std.bin", b"x" * 501, {"content-type": "image/jpeg"})
        assert str(caught.value.status) == "413"
        storage.from_("roomy").upload("std.bin", b"x" * 500, {"content-type": "image/jpeg"})
    finally:
        stack.storage.standard_upload_size_limit = None


# --- 7: the multipart form, check order, cache-control ------------------------------------------


def test_content_type_field_wins_mime_is_checked_before_size_and_cache_control_defaults(supabase_client, stack):
    supabase_client.storage.create_bucket("jpeg-small", options={"allowed_mime_types": ["image/jpeg"],
                                                                 "file_size_limit": 100})
    with raw(stack) as http:
        both_wrong = http.post("/storage/v1/object/jpeg-small/big.png",
                               files={"file": ("big.png", b"x" * 500, "image/png")})
        field_wins = http.post(f"/storage/v1/object/{BUCKET}/f.jpg", data={"contentType": "image/jpeg"},
                               files={"file": ("f.jpg", JPEG, "application/octet-stream")})
        bare = http.post(f"/storage/v1/object/{BUCKET}/bare.jpg", content=JPEG, headers={"content-type": "image/jpeg"})
    assert both_wrong.json()["statusCode"] == "415"
    assert field_wins.status_code == 200 and bare.status_code == 200
    stored = {o["name"]: o for o in stack.list_objects(BUCKET)}
    assert stored["f.jpg"]["content_type"] == "image/jpeg"
    assert stored["bare.jpg"]["cache_control"] == "no-cache"


# --- 8: racing uploads without upsert ------------------------------------------------------------


def test_racing_uploads_of_one_key_both_succeed_and_the_importer_takes_either(stack, client):
    lock = stack.storage._lock_for(BUCKET, "race/a.jpg")
    with lock, ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.upload, "race/a.jpg", JPEG, "image/jpeg") for _ in range(2)]
        deadline = time.monotonic() + 10
        while stack._gateway._in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        lock.release()
        try:
            outcomes = [f.result() for f in futures]
        finally:
            lock.acquire()
    assert outcomes == ["uploaded", "uploaded"]
    assert stack.read_object(BUCKET, "race/a.jpg") == JPEG
