"""Project types end to end (issue 14): keypoints kept, null vs unannotated images, box-less semantic
polygons, and a classification project aimed at an od_* dataset stopping the run before any write."""

from __future__ import annotations

import pytest
import requests

from pipeline import main as importer
from pipeline.testing.roboflow_emulator.dataset import KEYPOINT_NAMES, box_around_points
from tests.importer import importer_args, run_import
from tests.test_pipeline_e2e import BUCKET, DATASET, annotations_by_image, expected_bbox
from transforms.core.convert import source_ref


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'kinds')")
    return clean_supabase


def expected_keypoints(box: dict, width: int, height: int) -> list[dict]:
    raw = box["keypoints"]
    if raw and not isinstance(raw[0], dict):  # flat COCO triplets, named by the skeleton
        raw = [{"x": raw[i], "y": raw[i + 1], "class": KEYPOINT_NAMES[i // 3], "visible": raw[i + 2]}
               for i in range(0, len(raw), 3)]
    return [{"name": k["class"], "x": min(1.0, k["x"] / width), "y": min(1.0, k["y"] / height),
             "visible": k["visible"]} for k in raw]


def stored_keypoints(stack) -> dict[str, list]:
    rows = stack.sql("select i.source_ref, a.bbox_x, a.attributes from od_annotations a "
                     "join od_images i on i.id = a.image_id")
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row["source_ref"], []).append(row["attributes"]["keypoints"])
    return out


def assert_keypoints_match(emu, stack):
    stored = stored_keypoints(stack)
    for image_id in emu.dataset.image_ids:
        record = emu.dataset.image(image_id)
        expected = sorted((expected_keypoints(b, record.width, record.height) for b in record.boxes), key=repr)
        got = sorted(stored.get(source_ref(DATASET, image_id), []), key=repr)
        assert len(got) == len(expected), image_id
        for want, have in zip(expected, got, strict=True):
            assert [(k["name"], k["visible"]) for k in have] == [(k["name"], k["visible"]) for k in want]
            assert all(abs(h[c] - w[c]) < 1e-9 for h, w in zip(have, want, strict=True) for c in ("x", "y"))


@pytest.mark.parametrize("shape", ["objects", "flat"])
def test_keypoint_project_keeps_every_keypoint_and_tells_null_from_unannotated(
        roboflow_emulator, target, tmp_path, monkeypatch, shape):
    emu = roboflow_emulator(image_count=30, project_type="keypoint-detection", keypoint_shape=shape, seed=14,
                            empty_fraction=0.4, max_boxes=3)
    records = [emu.dataset.image(i) for i in emu.dataset.image_ids]
    null = [r.id for r in records if r.annotated and not r.boxes]
    never = [r.id for r in records if not r.annotated]
    assert null and never  # the seed gives both kinds

    code, summary, letters = run_import(emu, target, tmp_path / "1", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == []
    assert summary["keypoints"] == sum(len(KEYPOINT_NAMES) for r in records for _ in r.boxes)
    assert (summary["null_images"], summary["unannotated_images"]) == (len(null), len(never))
    assert summary["project_type"].startswith("keypoint-detection -> ")
    assert_keypoints_match(emu, target)
    skeletons = {tuple(row["attributes"]["skeleton"][0]) for row in target.sql("select attributes from od_annotations")}
    assert skeletons == {(1, 2)}

    rows = {r["source_ref"]: r for r in target.sql(
        "select i.source_ref, i.status, d.status as link_status, d.annotation_count, i.metadata, i.storage_path "
        "from od_images i join od_dataset_images d on d.image_id = i.id")}
    for record in records:
        row = rows[source_ref(DATASET, record.id)]
        want = "pending" if record.id in never else "annotated"
        assert (row["status"], row["link_status"], row["annotation_count"]) == (want, want, len(record.boxes))
        assert row["metadata"]["roboflow"]["user_metadata"] == record.user_metadata
    sample = records[0]
    original = requests.get(emu.original_url(sample.id), timeout=10).content
    assert target.read_object(BUCKET, rows[source_ref(DATASET, sample.id)]["storage_path"]) == original

    before = target.sql("select id, updated_at from od_annotations order by id")
    code, again, _ = run_import(emu, target, tmp_path / "2", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (again["unchanged"], again["new"], again["changed"]) == (30, 0, 0)
    assert target.sql("select id, updated_at from od_annotations order by id") == before
    assert (again["null_images"], again["unannotated_images"]) == (len(null), len(never))

    moved = next(r for r in records if r.boxes)
    box = dict(moved.boxes[0])
    box["keypoints"] = [{"x": 1, "y": 2, "class": "head", "class_id": 0, "visible": 2}]
    emu.dataset.set_boxes(moved.id, [box])
    emu.dataset.set_boxes(never[0], [])  # someone marks a never-labelled image as holding nothing
    code, third, _ = run_import(emu, target, tmp_path / "3", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (third["changed"], third["unchanged"]) == (2, 28)
    assert (third["null_images"], third["unannotated_images"]) == (len(null) + 1, len(never) - 1)
    assert_keypoints_match(emu, target)
    status = target.sql(f"select status from od_images where source_ref = '{source_ref(DATASET, never[0])}'")
    assert status == [{"status": "annotated"}]


def test_semantic_polygons_sent_without_boxes_get_their_boxes_from_the_points(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=20, project_type="semantic-segmentation", seed=3, empty_fraction=0.1)
    code, summary, letters = run_import(emu, target, tmp_path, DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == [] and summary["annotations_dropped"] == {}
    stored = annotations_by_image(target)
    total = 0
    for image_id in emu.dataset.image_ids:
        record = emu.dataset.image(image_id)
        assert all("x" not in shape for shape in record.boxes)  # the emulator sends masks without boxes
        expected = sorted((s["label"], len(s["points"]), expected_bbox(box_around_points(s["label"], s["points"]),
                                                                      record.width, record.height))
                          for s in record.boxes)
        got = sorted((r["class"], len(r["polygon"]), (r["bbox_x"], r["bbox_y"], r["bbox_width"], r["bbox_height"]))
                     for r in stored.get(source_ref(DATASET, image_id), []))
        assert [(c, n) for c, n, _ in got] == [(c, n) for c, n, _ in expected]
        assert all(abs(a - b) < 1e-2 / 640 + 1e-5 for (_, _, g), (_, _, e) in zip(got, expected, strict=True)
                   for a, b in zip(g, e, strict=True))
        assert len({c for c, _, _ in got}) == len(got)  # one polygon per class
        total += len(got)
    assert total == summary["annotations"] > 0


@pytest.mark.parametrize("fields", [{"project_type": "classification"},
                                    {"project_type": "classification", "multilabel": True}])
def test_a_classification_project_aimed_at_a_detection_dataset_stops_before_any_write(
        roboflow_emulator, target, tmp_path, monkeypatch, capsys, fields):
    """Imported into od_* every image would arrive without a label: the run says where it belongs."""
    emu = roboflow_emulator(image_count=5, **fields)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == importer.EXIT_INPUT
    assert len(err) == 1 and "is not in cls_datasets" in err[0] and "classification dataset" in err[0]
    assert target.sql("select count(*) as n from od_images") == [{"n": 0}]
    assert target.sql(f"select count(*) as n from od_classes where dataset_id = '{DATASET}'") == [{"n": 0}]
    assert target.list_objects(BUCKET) == []
