"""The local Supabase stack, driven through the official supabase-py client exactly as the importer will.

Each test pins a wire fact the importer depends on (status strings, error codes, retries, outages), so a
stand-in that drifts from the real service fails here first.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import ClientOptions, create_client

from pipeline.testing.supabase_stack import LocalSupabase, StackFaults, mint_key
from pipeline.testing.supabase_stack.postgrest import postgrest_binary
from pipeline.testing.supabase_stack.processes import REGISTRY_DIR, is_running, sweep_orphans

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "od-images"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 100
UPLOAD_ROUTE = "POST /storage/v1/object/{bucket}/{path}"


def image_row(source_ref: str, **overrides) -> dict:
    row = {
        "filename": f"{source_ref}.jpg",
        "image_url": f"https://example.test/{source_ref}.jpg",
        "width": 640,
        "height": 480,
        "source": "import",
        "source_ref": source_ref,
    }
    row.update(overrides)
    return row


def raw_client(stack: LocalSupabase, key: str | None = None, **kwargs) -> httpx.Client:
    """A plain httpx client for wire-level checks the SDK hides (HTTP status, raw bodies)."""
    key = key or stack.service_role_key
    return httpx.Client(base_url=stack.url, headers={"apikey": key, "Authorization": f"Bearer {key}"}, **kwargs)


def sdk_client(stack: LocalSupabase, key: str, timeout: float = 30):
    return create_client(stack.url, key, ClientOptions(httpx_client=httpx.Client(timeout=timeout)))


# --- storage: uploads and their errors ----------------------------------------------------------


def test_upload_stores_bytes_on_disk_and_returns_key(supabase_client, clean_supabase):
    response = supabase_client.storage.from_(BUCKET).upload(
        "ds1/train/abc.jpg", JPEG, {"content-type": "image/jpeg", "metadata": {"source": "roboflow"}}
    )

    assert response.full_path == "od-images/ds1/train/abc.jpg"
    assert clean_supabase.read_object(BUCKET, "ds1/train/abc.jpg") == JPEG
    [stored] = clean_supabase.list_objects(BUCKET)
    assert stored["name"] == "ds1/train/abc.jpg"
    assert stored["size"] == len(JPEG)
    assert stored["content_type"] == "image/jpeg"
    assert stored["cache_control"] == "max-age=3600"
    assert stored["metadata"] == {"source": "roboflow"}
    on_disk = list((clean_supabase.workdir / "storage" / "objects").rglob("*.obj"))
    assert [p.read_bytes() for p in on_disk] == [JPEG]


def test_reupload_without_upsert_is_a_409_duplicate_with_string_status(supabase_client, clean_supabase):
    bucket = supabase_client.storage.from_(BUCKET)
    bucket.upload("a.jpg", JPEG, {"content-type": "image/jpeg"})

    with pytest.raises(StorageApiError) as caught:
        bucket.upload("a.jpg", b"other bytes", {"content-type": "image/jpeg"})

    assert caught.value.status == "409"
    assert caught.value.code == "Duplicate"
    assert caught.value.message == "The resource already exists"
    assert clean_supabase.read_object(BUCKET, "a.jpg") == JPEG
    with raw_client(clean_supabase) as http:
        wire = http.post(f"/storage/v1/object/{BUCKET}/a.jpg", files={"file": ("a.jpg", b"x", "image/jpeg")})
    assert wire.status_code == 400
    assert wire.json() == {
        "statusCode": "409",
        "code": "KeyAlreadyExists",
        "error": "Duplicate",
        "message": "The resource already exists",
    }


def test_upsert_only_when_x_upsert_is_exactly_true(supabase_client, clean_supabase):
    bucket = supabase_client.storage.from_(BUCKET)
    bucket.upload("a.jpg", JPEG, {"content-type": "image/jpeg"})

    with pytest.raises(StorageApiError) as caught:
        bucket.upload("a.jpg", b"v2", {"content-type": "image/jpeg", "upsert": "True"})
    assert caught.value.status == "409"

    bucket.upload("a.jpg", b"v3", {"content-type": "image/png", "upsert": "true"})
    assert clean_supabase.read_object(BUCKET, "a.jpg") == b"v3"
    assert clean_supabase.list_objects(BUCKET)[0]["content_type"] == "image/png"

    bucket.update("a.jpg", b"v4", {"content-type": "image/jpeg"})
    assert clean_supabase.read_object(BUCKET, "a.jpg") == b"v4"


def test_upload_over_bucket_limit_is_413_entity_too_large(supabase_client, clean_supabase):
    supabase_client.storage.create_bucket("tiny", options={"public": False, "file_size_limit": 1024})

    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_("tiny").upload("big.jpg", b"x" * 2048, {"content-type": "image/jpeg"})

    assert (caught.value.status, caught.value.code) == ("413", "Payload too large")
    supabase_client.storage.from_("tiny").upload("small.jpg", b"x" * 1024, {"content-type": "image/jpeg"})
    assert [o["name"] for o in clean_supabase.list_objects("tiny")] == ["small.jpg"]


def test_upload_with_disallowed_mime_type_is_415(supabase_client):
    supabase_client.storage.create_bucket("jpeg-only", options={"allowed_mime_types": ["image/jpeg"]})
    bucket = supabase_client.storage.from_("jpeg-only")

    with pytest.raises(StorageApiError) as caught:
        bucket.upload("a.png", b"png", {"content-type": "image/png"})
    assert (caught.value.status, caught.value.code) == ("415", "invalid_mime_type")
    assert caught.value.message == "mime type image/png is not supported"

    with pytest.raises(StorageApiError) as default_type:
        bucket.upload("a.txt", b"text")
    assert default_type.value.status == "415"
    bucket.upload("a.jpg", JPEG, {"content-type": "image/jpeg"})


def test_upload_to_missing_bucket_is_404_bucket_not_found(supabase_client, clean_supabase):
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_("no-such-bucket").upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert (caught.value.status, caught.value.code) == ("404", "Bucket not found")

    with raw_client(clean_supabase) as http:
        wire = http.get("/storage/v1/object/info/no-such-bucket/a.jpg")
    assert wire.status_code == 400
    assert wire.json()["statusCode"] == "404"


def test_download_list_info_exists_and_remove(supabase_client, clean_supabase):
    bucket = supabase_client.storage.from_(BUCKET)
    for name in ("ds1/train/b.jpg", "ds1/train/a.jpg", "ds1/valid/c.jpg", "top.jpg"):
        bucket.upload(name, name.encode(), {"content-type": "image/jpeg"})

    assert bucket.download("ds1/train/a.jpg") == b"ds1/train/a.jpg"
    assert [e["name"] for e in bucket.list()] == ["ds1", "top.jpg"]
    assert bucket.list()[0]["id"] is None
    listed = bucket.list("ds1/train")
    assert [e["name"] for e in listed] == ["a.jpg", "b.jpg"]
    assert listed[0]["metadata"]["size"] == len(b"ds1/train/a.jpg")
    assert listed[0]["metadata"]["mimetype"] == "image/jpeg"
    assert [e["name"] for e in bucket.list("ds1/train", {"limit": 1, "offset": 1})] == ["b.jpg"]

    info = bucket.info("ds1/valid/c.jpg")
    assert info["name"] == "ds1/valid/c.jpg"
    assert info["size"] == len(b"ds1/valid/c.jpg")
    assert info["content_type"] == "image/jpeg"
    assert info["etag"].startswith('"')
    assert bucket.exists("ds1/valid/c.jpg") is True
    assert bucket.exists("ds1/valid/missing.jpg") is False

    removed = bucket.remove(["ds1/train/a.jpg", "never-existed.jpg"])
    assert [r["name"] for r in removed] == ["ds1/train/a.jpg"]
    with pytest.raises(StorageApiError) as caught:
        bucket.download("ds1/train/a.jpg")
    assert (caught.value.status, caught.value.code) == ("404", "not_found")
    with raw_client(clean_supabase) as http:
        head = http.head(f"/storage/v1/object/authenticated/{BUCKET}/top.jpg")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(b"top.jpg"))


def test_bucket_lifecycle(supabase_client):
    storage = supabase_client.storage
    assert storage.create_bucket("scratch", options={"public": True}) == {"name": "scratch"}
    with pytest.raises(StorageApiError) as duplicate:
        storage.create_bucket("scratch")
    assert (duplicate.value.status, duplicate.value.code) == ("409", "Duplicate")

    storage.update_bucket("scratch", {"public": False, "file_size_limit": 2048})
    bucket = storage.get_bucket("scratch")
    assert (bucket.public, bucket.file_size_limit) == (False, 2048)
    assert {b.id for b in storage.list_buckets()} == {BUCKET, "scratch"}

    storage.from_("scratch").upload("x.jpg", b"x", {"content-type": "image/jpeg"})
    with pytest.raises(StorageApiError) as not_empty:
        storage.delete_bucket("scratch")
    assert not_empty.value.status == "409"
    storage.empty_bucket("scratch")
    assert storage.from_("scratch").list() == []
    storage.delete_bucket("scratch")
    with pytest.raises(StorageApiError) as gone:
        storage.get_bucket("scratch")
    assert gone.value.status == "404"


def test_anon_key_cannot_write_storage_and_sees_nothing_private(supabase_client, clean_supabase):
    supabase_client.storage.from_(BUCKET).upload("secret.jpg", JPEG, {"content-type": "image/jpeg"})
    anon = sdk_client(clean_supabase, clean_supabase.anon_key)

    with pytest.raises(StorageApiError) as caught:
        anon.storage.from_(BUCKET).upload("anon.jpg", JPEG, {"content-type": "image/jpeg"})
    assert caught.value.status == "403"
    assert caught.value.message == "new row violates row-level security policy"
    assert anon.storage.from_(BUCKET).list() == []
    assert anon.storage.from_(BUCKET).exists("secret.jpg") is False
    assert [o["name"] for o in clean_supabase.list_objects(BUCKET)] == ["secret.jpg"]


def test_garbage_or_foreign_jwt_is_invalid_jwt(clean_supabase):
    foreign = mint_key("another-secret-that-is-long-enough-123", "service_role")
    with httpx.Client(base_url=clean_supabase.url, headers={"apikey": clean_supabase.anon_key}) as http:
        garbage = http.get(f"/storage/v1/object/info/{BUCKET}/a.jpg", headers={"Authorization": "Bearer garbage"})
        forged = http.get(f"/storage/v1/object/info/{BUCKET}/a.jpg", headers={"Authorization": f"Bearer {foreign}"})
        rest_forged = http.get("/rest/v1/od_images", headers={"Authorization": f"Bearer {foreign}"})

    assert garbage.status_code == 400
    assert garbage.json() == {
        "statusCode": "400",
        "code": "InvalidJWT",
        "error": "InvalidJWT",
        "message": "jwt malformed",
    }
    assert forged.json()["message"] == "invalid signature"
    assert rest_forged.status_code == 401
    assert rest_forged.json()["code"] == "PGRST301"


def test_gateway_requires_a_known_apikey_like_kong(clean_supabase):
    with httpx.Client(base_url=clean_supabase.url) as http:
        missing = http.get("/rest/v1/od_images")
        unknown = http.get("/storage/v1/bucket", headers={"apikey": "nope"})
        via_query = http.get("/rest/v1/od_images", params={"apikey": clean_supabase.service_role_key})
    assert (missing.status_code, missing.json()) == (401, {"message": "No API key found in request"})
    assert (unknown.status_code, unknown.json()) == (401, {"message": "Invalid authentication credentials"})
    assert via_query.status_code == 200


def test_default_client_options_work_and_warn(clean_supabase):
    client = create_client(clean_supabase.url, clean_supabase.service_role_key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage, table = client.storage, client.table("od_images")
    assert any("'timeout' parameter is deprecated" in str(w.message) for w in caught)

    storage.from_(BUCKET).upload("default.jpg", JPEG, {"content-type": "image/jpeg"})
    table.insert(image_row("rf:default"), returning="minimal").execute()
    assert client.table("od_images").select("source_ref").execute().data == [{"source_ref": "rf:default"}]
    assert clean_supabase.read_object(BUCKET, "default.jpg") == JPEG


def test_concurrent_uploads_of_one_path_both_succeed_like_the_real_server(supabase_client, clean_supabase):
    """Storage checks "must not exist" before storing and upserts the row after: two racing uploads without
    x-upsert both answer 200 and the last one wins. The object's lock is held so both pass the check first."""
    bucket = supabase_client.storage.from_(BUCKET)
    lock = clean_supabase.storage._lock_for(BUCKET, "race.jpg")

    def attempt(n: int) -> str:
        try:
            bucket.upload("race.jpg", JPEG + bytes([n]), {"content-type": "image/jpeg"})
            return "200"
        except StorageApiError as error:
            return str(error.status)

    with lock, ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(attempt, n) for n in range(2)]
        deadline = time.monotonic() + 10
        while clean_supabase._gateway._in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # both are past the existence check, waiting for the lock
        lock.release()
        try:
            outcomes = sorted(f.result() for f in futures)
        finally:
            lock.acquire()
    assert outcomes == ["200", "200"]
    assert clean_supabase.read_object(BUCKET, "race.jpg")[:-1] == JPEG
    with pytest.raises(StorageApiError) as caught:  # once stored, a third upload without upsert is refused
        bucket.upload("race.jpg", JPEG, {"content-type": "image/jpeg"})
    assert caught.value.status == "409"


def test_file_paths_and_chunked_bodies_are_accepted(supabase_client, clean_supabase, tmp_path):
    image = tmp_path / "from-disk.jpg"
    image.write_bytes(JPEG)
    supabase_client.storage.from_(BUCKET).upload("from-disk.jpg", str(image), {"content-type": "image/jpeg"})
    assert clean_supabase.read_object(BUCKET, "from-disk.jpg") == JPEG

    def chunks():
        yield b'[{"filename": "c.jpg", "image_url": "u", '
        yield b'"width": 1, "height": 1, "source_ref": "rf:chunked"}]'

    with raw_client(clean_supabase) as http:
        response = http.post("/rest/v1/od_images", content=chunks(), headers={"Content-Type": "application/json"})
        head = http.head("/rest/v1/od_images")
    assert response.status_code == 201
    assert head.status_code == 200
    assert clean_supabase.sql("select source_ref from od_images") == [{"source_ref": "rf:chunked"}]


# --- PostgREST through the gateway ---------------------------------------------------------------


def test_ignore_duplicates_upsert_then_map_ids_with_in(supabase_client, clean_supabase):
    rows = [image_row(f"rf:ws/p:{i}") for i in range(3)]
    table = supabase_client.table("od_images")

    first = table.upsert(rows, on_conflict="source_ref", ignore_duplicates=True, returning="minimal").execute()
    again = table.upsert(
        rows + [image_row("rf:ws/p:new")], on_conflict="source_ref", ignore_duplicates=True, default_to_null=False
    ).execute()

    assert first.data == []
    assert [r["source_ref"] for r in again.data] == ["rf:ws/p:new"]
    mapped = table.select("id, source_ref").in_("source_ref", [r["source_ref"] for r in rows]).execute()
    assert sorted(r["source_ref"] for r in mapped.data) == [r["source_ref"] for r in rows]
    assert clean_supabase.sql("select count(*) as n from od_images")[0]["n"] == 4


def test_merge_upsert_updates_and_fires_updated_at_trigger(supabase_client, clean_supabase):
    table = supabase_client.table("od_images")
    table.insert(image_row("rf:1")).execute()
    before = clean_supabase.sql("select width, updated_at from od_images where source_ref = 'rf:1'")[0]

    merged = table.upsert([image_row("rf:1", width=1024), image_row("rf:2")], on_conflict="source_ref").execute()

    assert sorted(r["source_ref"] for r in merged.data) == ["rf:1", "rf:2"]
    after = clean_supabase.sql("select width, updated_at from od_images where source_ref = 'rf:1'")[0]
    assert (before["width"], after["width"]) == (640, 1024)
    assert after["updated_at"] > before["updated_at"]


def test_same_key_twice_in_one_merge_batch_is_21000(supabase_client):
    with pytest.raises(APIError) as caught:
        supabase_client.table("od_images").upsert(
            [image_row("rf:dup"), image_row("rf:dup", width=1)], on_conflict="source_ref", returning="minimal"
        ).execute()
    assert caught.value.code == "21000"
    assert "cannot affect row a second time" in caught.value.message
    supabase_client.table("od_images").upsert(
        [image_row("rf:dup"), image_row("rf:dup")], on_conflict="source_ref", ignore_duplicates=True
    ).execute()


def test_plain_insert_of_existing_key_is_23505(supabase_client):
    supabase_client.table("od_images").insert(image_row("rf:x")).execute()
    with pytest.raises(APIError) as caught:
        supabase_client.table("od_images").insert(image_row("rf:x")).execute()
    assert caught.value.code == "23505"
    assert 'unique constraint "od_images_source_ref_unique"' in caught.value.message
    assert caught.value.details == "Key (source_ref)=(rf:x) already exists."


def test_on_conflict_without_a_unique_constraint_is_42P10(supabase_client, clean_supabase):
    clean_supabase.execute_sql(
        "create unique index if not exists od_images_filename_partial on od_images (filename) where source = 'upload';"
    )
    try:
        for target in ("filename", "width,height"):
            with pytest.raises(APIError) as caught:
                supabase_client.table("od_images").upsert(image_row("rf:y"), on_conflict=target).execute()
            assert caught.value.code == "42P10"
    finally:
        clean_supabase.execute_sql("drop index od_images_filename_partial;")


def test_unknown_column_is_PGRST204(supabase_client):
    with pytest.raises(APIError) as caught:
        supabase_client.table("od_images").insert(image_row("rf:z", nope=1)).execute()
    assert caught.value.code == "PGRST204"
    assert "nope" in caught.value.message


def test_missing_table_reads_42P01_and_writes_get_an_empty_404(supabase_client, clean_supabase):
    clean_supabase.execute_sql("create table scratch_table (id int primary key);")
    assert supabase_client.table("scratch_table").select("*").execute().data == []
    clean_supabase.execute_sql("drop table scratch_table;")

    with pytest.raises(APIError) as read:
        supabase_client.table("scratch_table").select("*").execute()
    with pytest.raises(APIError) as write:
        supabase_client.table("scratch_table").insert({"id": 1}).execute()

    assert read.value.code == "42P01"
    assert (write.value.code, write.value.message, write.value.details) == (None, None, None)


def test_anon_key_cannot_write_rows(clean_supabase):
    anon = sdk_client(clean_supabase, clean_supabase.anon_key)
    with pytest.raises(APIError) as caught:
        anon.table("od_images").insert(image_row("rf:anon")).execute()
    assert caught.value.code == "42501"
    assert clean_supabase.sql("select count(*) as n from od_images")[0]["n"] == 0


def test_db_max_rows_caps_reads_not_writes(supabase_client):
    rows = [image_row(f"rf:many:{i}") for i in range(1200)]
    written = supabase_client.table("od_images").insert(rows).execute()
    assert len(written.data) == 1200
    assert len(supabase_client.table("od_images").select("id").execute().data) == 1000


# --- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 520])
def test_storage_5xx_is_cloudflare_html_with_int_status(supabase_client, clean_supabase, status):
    clean_supabase.faults = StackFaults(storage_5xx_rate=1.0, storage_5xx_statuses=(status,))
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_(BUCKET).upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert caught.value.status == status
    assert caught.value.code == "InternalError"
    assert "Unable to parse error message" in caught.value.message and "cf-error-details" in caught.value.message
    assert clean_supabase.list_objects(BUCKET) == []
    assert clean_supabase.counters()["faults"] == {"storage_5xx": 1}


def test_storage_503_is_plain_text_from_the_edge(supabase_client, clean_supabase):
    clean_supabase.faults = StackFaults(storage_5xx_rate=1.0, storage_5xx_statuses=(503,))
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_(BUCKET).upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert caught.value.status == 503
    assert "upstream connect error" in caught.value.message


def test_storage_429_slowdown(supabase_client, clean_supabase):
    clean_supabase.faults = StackFaults(storage_429_rate=1.0)
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_(BUCKET).upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert caught.value.status == "429"
    assert caught.value.code == "too_many_connections"
    with raw_client(clean_supabase) as http:
        wire = http.get("/storage/v1/bucket")
    assert (wire.status_code, wire.json()["code"]) == (429, "SlowDown")


def test_storage_disconnect_mid_body_after_the_write_landed(supabase_client, clean_supabase):
    clean_supabase.faults = StackFaults(storage_disconnect_rate=1.0)
    bucket = supabase_client.storage.from_(BUCKET)
    with pytest.raises(httpx.RemoteProtocolError):
        bucket.upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert clean_supabase.read_object(BUCKET, "a.jpg") == JPEG

    clean_supabase.faults = StackFaults()
    with pytest.raises(StorageApiError) as retry:
        bucket.upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert retry.value.status == "409"


def test_storage_slow_responses_time_out_the_client(clean_supabase):
    clean_supabase.faults = StackFaults(storage_slow_rate=1.0, slow_seconds=0.6)
    impatient = sdk_client(clean_supabase, clean_supabase.service_role_key, timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        impatient.storage.from_(BUCKET).upload("slow.jpg", JPEG, {"content-type": "image/jpeg"})

    patient = sdk_client(clean_supabase, clean_supabase.service_role_key, timeout=5)
    started = time.monotonic()
    patient.storage.from_(BUCKET).upload("slow2.jpg", JPEG, {"content-type": "image/jpeg"})
    assert time.monotonic() - started >= 0.6
    assert clean_supabase.counters()["faults"]["storage_slow"] == 2


def test_proxy_style_413_html(supabase_client, clean_supabase):
    clean_supabase.faults = StackFaults(storage_413_rate=1.0)
    with pytest.raises(StorageApiError) as caught:
        supabase_client.storage.from_(BUCKET).upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
    assert (caught.value.status, caught.value.code) == (413, "InternalError")
    assert "413 Request Entity Too Large" in caught.value.message

    clean_supabase.faults = StackFaults(proxy_max_body_bytes=4096)
    with pytest.raises(APIError) as rest:
        supabase_client.table("od_images").insert([image_row(f"rf:{i}") for i in range(100)]).execute()
    assert (rest.value.code, rest.value.message) == ("413", "Request Entity Too Large")
    supabase_client.table("od_images").insert(image_row("rf:small")).execute()
    assert clean_supabase.sql("select source_ref from od_images") == [{"source_ref": "rf:small"}]


def test_rest_503_is_retried_by_the_client_for_reads_only(supabase_client, clean_supabase, monkeypatch):
    monkeypatch.setattr("postgrest._sync.request_builder.get_retry_delay", lambda attempt: 0)
    clean_supabase.faults = StackFaults(rest_503_rate=1.0)

    with pytest.raises(APIError) as read:
        supabase_client.table("od_images").select("id").execute()
    with pytest.raises(APIError) as write:
        supabase_client.table("od_images").insert(image_row("rf:503")).execute()

    assert read.value.code == write.value.code == "PGRST001"
    requests = clean_supabase.counters()["requests"]
    assert requests["GET /rest/v1/od_images"] == {"503": 4}
    assert requests["POST /rest/v1/od_images"] == {"503": 1}


@pytest.mark.parametrize(("field", "status"), [("rest_500_rate", 500), ("rest_429_rate", 429)])
def test_rest_500_and_429_are_html_errors(supabase_client, clean_supabase, field, status):
    clean_supabase.faults = StackFaults(**{field: 1.0})
    with pytest.raises(APIError) as caught:
        supabase_client.table("od_images").insert(image_row("rf:e")).execute()
    assert caught.value.code == str(status)
    assert "cf-error-details" in caught.value.details
    assert clean_supabase.sql("select count(*) as n from od_images")[0]["n"] == 0


def test_rest_lost_response_means_the_write_may_have_landed(supabase_client, clean_supabase):
    clean_supabase.faults = StackFaults(rest_lost_response_rate=1.0)
    with pytest.raises(APIError) as caught:
        supabase_client.table("od_images").insert(image_row("rf:landed"), returning="minimal").execute()
    assert caught.value.code == "502"
    assert clean_supabase.sql("select source_ref from od_images") == [{"source_ref": "rf:landed"}]


def test_rest_slow_responses_time_out_the_client(clean_supabase):
    clean_supabase.faults = StackFaults(rest_slow_rate=1.0, slow_seconds=0.6)
    impatient = sdk_client(clean_supabase, clean_supabase.service_role_key, timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        impatient.table("od_images").insert(image_row("rf:slow")).execute()
    assert clean_supabase.counters()["faults"]["rest_slow"] == 1


def test_faults_are_seeded_and_switchable_over_http(clean_supabase):
    def statuses(seed: int) -> list[int]:
        faults = StackFaults(seed=seed, storage_5xx_rate=0.5, storage_5xx_statuses=(502,))
        with raw_client(clean_supabase) as http:
            assert http.post("/__stack/faults", json=faults.to_dict()).status_code == 200
            return [http.get("/storage/v1/bucket").status_code for _ in range(20)]

    first, second = statuses(7), statuses(7)
    assert first == second
    assert set(first) == {200, 502}
    assert clean_supabase.faults.seed == 7

    with httpx.Client(base_url=clean_supabase.url, headers={"apikey": clean_supabase.anon_key}) as http:
        assert http.post("/__stack/faults", json={}).status_code == 401
    with raw_client(clean_supabase) as http:
        assert http.post("/__stack/faults", json={"bogus_rate": 1}).status_code == 400
        counters = http.get("/__stack/counters").json()
    assert counters["requests"]["GET /storage/v1/bucket"]["502"] == first.count(502) * 2


def test_counters_count_requests_per_route_and_status(supabase_client, clean_supabase):
    bucket = supabase_client.storage.from_(BUCKET)
    for i in range(3):
        bucket.upload(f"{i}.jpg", JPEG, {"content-type": "image/jpeg"})
    with pytest.raises(StorageApiError):
        bucket.upload("0.jpg", JPEG, {"content-type": "image/jpeg"})
    supabase_client.table("od_images").insert(image_row("rf:c")).execute()

    requests = clean_supabase.counters()["requests"]
    assert requests[UPLOAD_ROUTE] == {"200": 3, "400": 1}
    assert requests["POST /rest/v1/od_images"] == {"201": 1}


# --- SQL helpers and reset ------------------------------------------------------------------------


def test_sql_helpers_and_schema_reload(supabase_client, clean_supabase):
    dataset_id = str(uuid.uuid4())
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{dataset_id}', 'seeded');")
    assert clean_supabase.sql("select id, name from od_datasets") == [{"id": dataset_id, "name": "seeded"}]
    clean_supabase.execute_sql("alter table od_datasets add column if not exists scratch_note text;")
    try:
        supabase_client.table("od_datasets").update({"scratch_note": "visible"}).eq("id", dataset_id).execute()
        assert clean_supabase.sql("select scratch_note from od_datasets")[0]["scratch_note"] == "visible"
    finally:
        clean_supabase.execute_sql("alter table od_datasets drop column scratch_note;")


def test_reset_empties_tables_and_buckets_but_keeps_system_classes(supabase_client, clean_supabase):
    dataset = supabase_client.table("od_datasets").insert({"name": "d"}).execute().data[0]
    supabase_client.table("od_classes").insert({"name": "helmet", "dataset_id": dataset["id"]}).execute()
    supabase_client.storage.from_(BUCKET).upload("x.jpg", JPEG, {"content-type": "image/jpeg"})
    supabase_client.storage.create_bucket("extra")
    clean_supabase.faults = StackFaults(rest_500_rate=0.1)

    clean_supabase.reset()

    assert clean_supabase.sql("select count(*) as n from od_datasets")[0]["n"] == 0
    assert clean_supabase.sql(
        "select count(*) filter (where is_system) as system, count(*) as total from od_classes"
    ) == [{"system": 7, "total": 7}]
    assert clean_supabase.list_objects(BUCKET) == []
    assert clean_supabase.storage.get_bucket("extra") is None
    assert clean_supabase.faults == StackFaults()


def test_reset_recreates_a_dropped_table(clean_supabase):
    clean_supabase.execute_sql("drop table od_annotations;")
    clean_supabase.reset()
    assert clean_supabase.sql("select to_regclass('public.od_annotations')::text as t") == [{"t": "od_annotations"}]
    with raw_client(clean_supabase) as http:
        assert http.get("/rest/v1/od_annotations").status_code == 200


# --- lifecycle --------------------------------------------------------------------------------------


def test_outage_refuses_connections_then_returns_on_same_ports_with_data(supabase_client, clean_supabase):
    supabase_client.storage.from_(BUCKET).upload("kept.jpg", JPEG, {"content-type": "image/jpeg"})
    supabase_client.table("od_images").insert(image_row("rf:kept")).execute()
    url, db_url = clean_supabase.url, clean_supabase.db_url

    clean_supabase.stop_services()
    try:
        with pytest.raises(httpx.ConnectError):
            supabase_client.storage.from_(BUCKET).download("kept.jpg")
        with pytest.raises(httpx.ConnectError):
            supabase_client.table("od_images").insert(image_row("rf:lost")).execute()
        with pytest.raises(httpx.ConnectError):
            httpx.get(clean_supabase.postgrest_url, timeout=2)
        assert clean_supabase.pids() == {}
    finally:
        clean_supabase.start_services()

    assert (clean_supabase.url, clean_supabase.db_url) == (url, db_url)
    assert supabase_client.storage.from_(BUCKET).download("kept.jpg") == JPEG
    rows = supabase_client.table("od_images").select("source_ref").execute().data
    assert rows == [{"source_ref": "rf:kept"}]


CRASHING_OWNER = textwrap.dedent(
    """
    import json, sys, threading, time
    from pipeline.testing.supabase_stack import LocalSupabase

    holder = {}
    starter = threading.Thread(target=lambda: holder.update(stack=LocalSupabase().start()))
    starter.start()
    starter.join()
    stack = holder["stack"]
    stack.sql("select 1")
    print(json.dumps({"pids": stack.pids(), "workdir": str(stack.workdir)}), flush=True)
    time.sleep(600)
    """
)


def child_pids(parent: int) -> list[int]:
    """Pids whose parent is `parent` (the postmaster's background workers and backends)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def test_sigkill_of_the_owner_leaves_nothing_running():
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(owner.stdout.readline())
        pids, workdir = started["pids"], Path(started["workdir"])
        assert set(pids) == {"postgres", "postgrest"}
        assert all(is_running(pid) for pid in pids.values()), "the starter thread's exit must not stop services"
        server_processes = list(pids.values()) + child_pids(pids["postgres"])
        assert len(server_processes) > 4
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_running(pid) for pid in server_processes):
        time.sleep(0.1)
    assert [pid for pid in server_processes if is_running(pid)] == []

    assert workdir.exists()
    sweep_orphans()
    assert not workdir.exists()
    assert not any(str(workdir) in p.read_text() for p in REGISTRY_DIR.glob("*.json"))


def test_cli_prints_one_json_line_serves_and_stops_on_sigterm():
    help_text = subprocess.run(
        [sys.executable, "-m", "pipeline.testing.supabase_stack", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--storage-5xx-rate" in help_text and "--no-migrate" in help_text

    workdir = Path(tempfile.mkdtemp(prefix="supabase-cli-test-"))
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.testing.supabase_stack",
            "--workdir",
            str(workdir),
            "--bucket",
            "cli-bucket",
            "--rest-500-rate",
            "0",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(cli.stdout.readline())
        assert set(ready) == {"url", "service_role_key", "anon_key", "db_url"}
        client = sdk_client_from(ready)
        client.storage.from_("cli-bucket").upload("a.jpg", JPEG, {"content-type": "image/jpeg"})
        client.table("od_images").insert(image_row("rf:cli")).execute()
        cli.send_signal(signal.SIGTERM)
        _out, err = cli.communicate(timeout=30)
        assert cli.returncode == 0
        assert ready["service_role_key"] not in err and ready["anon_key"] not in err
        assert list(workdir.glob("storage/objects/cli-bucket/*.obj"))
        with pytest.raises(httpx.ConnectError):
            httpx.get(ready["url"], timeout=2)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_kept_workdir_is_reused_with_its_cluster_secret_and_objects():
    workdir = Path(tempfile.mkdtemp(prefix="supabase-workdir-test-"))
    try:
        with LocalSupabase(workdir) as first:
            secret = first.jwt_secret
            client = sdk_client(first, first.service_role_key)
            client.storage.from_(BUCKET).upload("kept.jpg", JPEG, {"content-type": "image/jpeg"})
            client.table("od_images").insert(image_row("rf:kept")).execute()
        assert (workdir / "pgdata" / "PG_VERSION").exists()

        with LocalSupabase(workdir) as second:
            assert second.jwt_secret == secret
            client = sdk_client(second, second.service_role_key)
            assert client.storage.from_(BUCKET).download("kept.jpg") == JPEG
            assert client.table("od_images").select("source_ref").execute().data == [{"source_ref": "rf:kept"}]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sdk_client_from(ready: dict):
    return create_client(ready["url"], ready["service_role_key"], ClientOptions(httpx_client=httpx.Client()))


def test_missing_postgrest_binary_fails_loudly(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTGREST_BIN", str(tmp_path / "absent"))
    with pytest.raises(RuntimeError, match="run ./scripts/bootstrap.sh"):
        postgrest_binary()


def test_every_nth_rest_request_fails_whatever_the_seed():
    from pipeline.testing.supabase_stack.faults import FaultInjector

    for seed in (0, 1, 2):
        injector = FaultInjector(StackFaults(seed=seed, rest_503_every=3))
        kinds = [injector.for_rest().kind for _ in range(9)]
        assert [i for i, kind in enumerate(kinds, start=1) if kind == "rest_503"] == [3, 6, 9]
        assert all(injector.for_storage().kind is None for _ in range(5))  # storage untouched
