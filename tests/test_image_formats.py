"""Every original format end to end, multi-MB originals, and a bucket that refuses some types (issue 14)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests

from pipeline import main as importer
from pipeline import plan as plan_module
from tests.importer import importer_args, run_import
from transforms.core.convert import source_ref

DATASET = "4057113e-0dd5-4a7a-9b1e-0000000000f5"
BUCKET = "od-images"
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp", "tiff": "image/tiff",
        "gif": "image/gif"}
EXTENSION = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "tiff": "tiff", "gif": "gif"}
CLS_LIKE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif"]  # the platform's cls-images bucket


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'formats')")
    return clean_supabase


def formats_of(emu) -> dict[str, str]:
    return {i: emu.dataset.image(i).image_format for i in emu.dataset.image_ids}


def test_every_format_and_multi_mb_originals_are_stored_byte_for_byte_with_their_type(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=14, seed=21, png_fraction=0.15, other_format_fraction=0.7,
                            image_kb_min=1024, image_kb_max=3072)
    formats = formats_of(emu)
    assert set(formats.values()) == set(MIME)  # the seed gives all six

    code, summary, letters = run_import(emu, target, tmp_path / "1", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == [] and summary["imported"] == 14
    rows = {r["source_ref"]: r for r in target.sql(
        "select source_ref, storage_path, mime_type, file_size_bytes, width, height from od_images")}
    for image_id, fmt in formats.items():
        row = rows[source_ref(DATASET, image_id)]
        original = requests.get(emu.original_url(image_id), timeout=30).content
        assert len(original) >= 1024 * 1024
        assert (row["mime_type"], row["storage_path"].rsplit(".", 1)[1]) == (MIME[fmt], EXTENSION[fmt])
        assert target.read_object(BUCKET, row["storage_path"]) == original
        record = emu.dataset.image(image_id)
        assert (row["width"], row["height"], row["file_size_bytes"]) == (record.width, record.height, len(original))

    code, again, _ = run_import(emu, target, tmp_path / "2", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (again["unchanged"], again["objects_uploaded"]) == (14, 0)


def test_a_bucket_refusing_some_types_is_planned_then_dead_letters_them_without_uploading(
        roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=24, seed=22, png_fraction=0.2, other_format_fraction=0.6)
    formats = formats_of(emu)
    refused = {i for i, fmt in formats.items() if fmt in ("bmp", "tiff")}
    assert 0 < len(refused) < 24
    bucket = "cls-like"
    target.storage.create_bucket(bucket, public=True, file_size_limit=52428800, allowed_mime_types=CLS_LIKE_TYPES)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)

    argv = importer_args(emu, target, tmp_path / "plan", DATASET, "--storage_bucket", bucket)
    assert importer.run([*argv, "--plan_json"]) == plan_module.EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["bucket"]["allowed_mime_types"] == CLS_LIKE_TYPES and plan["bucket"]["file_size_limit"] == 52428800
    sampled = plan_module._sample(emu.dataset.image_ids, plan_module.SAMPLE_SIZE)
    in_sample = sum(1 for i in sampled if i in refused)
    assert plan["bucket"]["refused_in_sample"] == in_sample > 0
    assert plan["bucket"]["refused_estimate"] == round(24 * in_sample / len(sampled))
    assert target.list_objects(bucket) == []
    assert importer.run([*argv, "--plan"]) == plan_module.EXIT_OK
    assert "bucket refuses     ~" in capsys.readouterr().out

    code, summary, letters = run_import(emu, target, tmp_path / "1", DATASET, "--storage_bucket", bucket,
                                        monkeypatch=monkeypatch)
    assert code == importer.EXIT_INCOMPLETE
    assert {(d.image_id, d.step, d.error_type) for d in letters} == {(i, "upload", "mime_not_allowed") for i in refused}
    assert summary["imported"] == 24 - len(refused)
    uploads = Counter()
    for route, statuses in target.counters()["requests"].items():
        if route.startswith("POST /storage/v1/object/"):
            uploads.update(statuses)
    assert dict(uploads) == {"200": 24 - len(refused)}  # nothing refused was sent

    target.storage.update_bucket(bucket, {"allowed_mime_types": [*CLS_LIKE_TYPES, "image/bmp", "image/tiff"]})
    code, retried, letters = run_import(emu, target, tmp_path / "2", DATASET, "--storage_bucket", bucket,
                                        "--retry_dead_letters", str(tmp_path / "1" / "dead"), monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == [] and retried["new"] == len(refused)
    stored = {r["mime_type"] for r in target.sql("select mime_type from od_images")}
    assert {"image/bmp", "image/tiff"} & stored


def test_a_bucket_that_takes_no_image_type_stops_before_any_write(roboflow_emulator, target, tmp_path, monkeypatch,
                                                                  capsys):
    emu = roboflow_emulator(image_count=4, seed=2)
    target.storage.create_bucket("pdf-only", allowed_mime_types=["application/pdf"])
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET, "--storage_bucket", "pdf-only"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == importer.EXIT_INPUT and len(err) == 1 and "allows only application/pdf" in err[0]
    assert target.sql("select count(*) as n from od_images") == [{"n": 0}]
