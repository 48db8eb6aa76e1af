"""The import, end to end: emulator -> Beam (FnApiRunner, 4 workers) -> local Supabase stack."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import requests

from pipeline import main as importer
from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import run_import as importer_run
from transforms.core.convert import source_ref

DATASET = "11111111-2222-4333-8444-555555555555"
BUCKET = "od-images"


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'e2e')")
    return clean_supabase


def run_import(emu, stack, out: Path, *extra: str, monkeypatch) -> tuple[int, dict, list]:
    return importer_run(emu, stack, out, DATASET, *extra, monkeypatch=monkeypatch)


def expected_bbox(box: dict, width: int, height: int):
    x0 = max(0.0, (box["x"] - box["width"] / 2) / width)
    x1 = min(1.0, (box["x"] + box["width"] / 2) / width)
    y0 = max(0.0, (box["y"] - box["height"] / 2) / height)
    y1 = min(1.0, (box["y"] + box["height"] / 2) / height)
    return x0, y0, x1 - x0, y1 - y0


def annotations_by_image(stack) -> dict[str, list[dict]]:
    rows = stack.sql(
        "select i.source_ref, a.id, a.bbox_x, a.bbox_y, a.bbox_width, a.bbox_height, a.polygon, c.name as class "
        "from od_annotations a join od_images i on i.id = a.image_id join od_classes c on c.id = a.class_id")
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["source_ref"], []).append(row)
    return out


def assert_annotations_match(emu, stack, image_ids, tolerance=1e-5):
    """Every image's rows equal the emulator's boxes, converted; numerically (``real`` columns), any order."""
    stored = annotations_by_image(stack)
    for image_id in image_ids:
        record = emu.dataset.image(image_id)
        expected = [(box["label"], expected_bbox(box, record.width, record.height), len(box.get("points") or []))
                    for box in record.boxes]
        got = [(row["class"], (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"]),
                len(row["polygon"] or [])) for row in stored.get(source_ref(DATASET, image_id), [])]
        assert len(got) == len(expected), image_id
        for label, bbox, points in expected:
            match = next((g for g in got if g[0] == label and g[2] == points
                          and all(abs(a - b) <= tolerance for a, b in zip(g[1], bbox, strict=True))), None)
            assert match is not None, (image_id, label, bbox)
            got.remove(match)


def test_import_end_to_end_with_deleted_and_undecodable_images(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=150, project_type="instance-segmentation", seed=11,
                            faults=FaultConfig(deleted_after_listing=3, undecodable=2, undefined_url_rate=0.2,
                                               eventually_consistent=4, eventual_tries=2))
    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    targets = emu.fault_targets()
    bad = set(targets["deleted_after_listing"]) | set(targets["undecodable"])
    assert code == importer.EXIT_INCOMPLETE
    assert {(d.image_id, d.step, d.error_type) for d in letters} == (
        {(i, "fetch_details", "not_found") for i in targets["deleted_after_listing"]}
        | {(i, "upload", "undecodable_image") for i in targets["undecodable"]})
    assert len(targets["undefined_url"]) > 0 and len(targets["eventually_consistent"]) == 4
    assert summary["listed"] == 150 == summary["imported"] + summary["failed"]
    assert summary["failed"] == 5 and summary["unaccounted"] == 0

    good = [i for i in emu.dataset.image_ids if i not in bad]
    images = {r["source_ref"]: r for r in target.sql(
        "select source_ref, storage_path, mime_type, width, height, file_hash, metadata from od_images")}
    assert set(images) == {source_ref(DATASET, i) for i in good}
    for image_id in good:
        row = images[source_ref(DATASET, image_id)]
        original = requests.get(emu.original_url(image_id), timeout=10).content
        assert target.read_object(BUCKET, row["storage_path"]) == original
        assert row["mime_type"] == ("image/png" if original.startswith(b"\x89PNG") else "image/jpeg")
        assert row["metadata"]["roboflow"]["image_id"] == image_id
        assert row["metadata"]["roboflow"]["workspace"] == emu.config.workspace
    assert len(target.list_objects(BUCKET)) == len(good)
    assert_annotations_match(emu, target, good)

    splits = {r["split"] for r in target.sql("select distinct split from od_dataset_images")}
    assert splits <= {"train", "val", "test"} and "val" in splits
    counts = target.sql(f"select image_count, annotation_count from od_datasets where id = '{DATASET}'")[0]
    assert counts["image_count"] == len(good)
    assert counts["annotation_count"] == sum(len(v) for v in annotations_by_image(target).values())


def test_rerun_writes_and_uploads_nothing_and_picks_up_changed_annotations(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=60, project_type="instance-segmentation", seed=5)
    code, first, _ = run_import(emu, target, tmp_path / "1", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and first["imported"] == 60
    before = target.sql("select id, source_ref, updated_at from od_images order by id")
    annotations_before = target.sql("select id, updated_at from od_annotations order by id")
    objects_before = target.list_objects(BUCKET)

    emu.reset_counters()
    code, second, _ = run_import(emu, target, tmp_path / "2", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert (second["unchanged"], second["new"], second["changed"], second["objects_uploaded"]) == (60, 0, 0, 0)
    assert target.sql("select id, source_ref, updated_at from od_images order by id") == before
    assert target.sql("select id, updated_at from od_annotations order by id") == annotations_before
    assert target.list_objects(BUCKET) == objects_before
    assert emu.counters().get("cdn_original", 0) == 0

    changed = emu.dataset.image_ids[3]
    label = emu.dataset.image(changed).boxes[0]["label"] if emu.dataset.image(changed).boxes else \
        emu.dataset.classes[0]
    new_boxes = [{"label": label, "x": 50, "y": 60, "width": 40, "height": 30},
                 {"label": label, "x": 10, "y": 10, "width": 100, "height": 100}]
    emu.dataset.set_boxes(changed, new_boxes)
    code, third, _ = run_import(emu, target, tmp_path / "3", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert (third["changed"], third["unchanged"], third["objects_uploaded"]) == (1, 59, 0)
    assert_annotations_match(emu, target, emu.dataset.image_ids)
    dupes = target.sql("select source_ref, count(*) from od_images group by 1 having count(*) > 1")
    assert dupes == []


def test_offset_listing_in_parallel_splits_loses_nothing_with_four_workers(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=1100, seed=4, image_kb_max=6)
    code, summary, _ = run_import(emu, target, tmp_path, "--roboflow_listing", "offset",
                                  "--direct_num_workers", "4", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert summary["listed"] == summary["imported"] == 1100
    assert summary["roboflow_api_calls"]["search"] >= 5  # several pages, read in parallel splits
    assert target.sql("select count(distinct source_ref) as n from od_images")[0]["n"] == 1100


@pytest.mark.parametrize("listing", ["token", "offset", "auto"])
def test_listing_modes_under_unstable_offset_order(listing, roboflow_emulator, target, tmp_path, monkeypatch):
    """Token paging stays exact; offset paging de-duplicates and reports what it missed; auto sees the
    offset pages come back short and completes them with one token walk."""
    emu = roboflow_emulator(image_count=1200, seed=3, image_kb_max=6,
                            faults=FaultConfig(unstable_order_rate=1.0, unstable_order_window=400))
    code, summary, _ = run_import(emu, target, tmp_path, "--roboflow_listing", listing, monkeypatch=monkeypatch)
    rows = target.sql("select count(*) as n, count(distinct source_ref) as d from od_images")[0]
    assert rows["n"] == rows["d"] == summary["imported"] == summary["listed"]
    assert summary["listed"] + summary["missing_from_listing"] == 1200
    if listing == "offset":
        assert summary["missing_from_listing"] > 0 and code == importer.EXIT_INCOMPLETE
    else:
        assert code == importer.EXIT_OK and summary["listed"] == 1200
    if listing == "auto":
        assert summary["roboflow_api_calls"]["search"] >= 5 and summary["roboflow_api_calls"]["search_v1"] >= 12


def test_auto_listing_of_a_stable_project_reads_parallel_pages_and_no_token_walk(
        roboflow_emulator, target, tmp_path, monkeypatch):
    """The default listing costs one project-search page per 250 images when the pages agree with the count."""
    emu = roboflow_emulator(image_count=1100, seed=6, image_kb_max=6)
    code, summary, _ = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and summary["listed"] == summary["imported"] == 1100
    counters = emu.counters()
    assert counters.get("search_v1", 0) == 0
    assert counters["search"] == 1 + 6  # the preflight count, then ceil(1100 / 250) + 1 pages


def test_unmapped_class_is_an_input_error_before_any_write(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=10)
    mapping = tmp_path / "mapping.json"
    first = emu.dataset.classes[0]
    mapping.write_text(json.dumps([{"source_name": first, "create_new": True}]))
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(["--roboflow_workspace", emu.config.workspace, "--roboflow_project", emu.config.project,
                         "--roboflow_api_url", emu.api_url, "--supabase_url", target.url, "--dataset_id", DATASET,
                         "--class_mapping", str(mapping), "--summary_path", str(tmp_path / "s.json")])
    assert code == importer.EXIT_INPUT
    assert target.sql("select count(*) as n from od_classes where dataset_id is not null")[0]["n"] == 0
    assert target.list_objects(BUCKET) == [] and not (tmp_path / "s.json").exists()


def test_geometry_survives_the_table_checks(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=3, seed=9)
    image_id = emu.dataset.image_ids[0]
    record = emu.dataset.image(image_id)
    label = emu.dataset.classes[0]
    emu.dataset.set_boxes(image_id, [
        {"label": label, "x": -50, "y": -50, "width": 40, "height": 40},  # wholly outside: dropped
        {"label": label, "x": 0, "y": 0, "width": 100, "height": 60},  # half outside: clipped
        {"label": label, "x": record.width / 2, "y": record.height / 2, "width": record.width * 3,
         "height": record.height * 3},  # larger than the image: clipped to it
    ])
    code, summary, _ = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    rows = sorted((r["bbox_x"], r["bbox_y"], r["bbox_width"], r["bbox_height"]) for r in target.sql(
        "select a.* from od_annotations a join od_images i on i.id = a.image_id "
        f"where i.source_ref = '{source_ref(DATASET, image_id)}'"))
    assert len(rows) == 2 and summary["annotations_dropped"] == {"invalid_geometry": 1}
    assert [pytest.approx(v, abs=1e-6) for v in rows[0]] == [0, 0, 50 / record.width, 30 / record.height]
    assert [pytest.approx(v, abs=1e-6) for v in rows[1]] == [0, 0, 1, 1]
    assert all(math.isfinite(v) for row in rows for v in row)
