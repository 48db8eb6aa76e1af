"""Classification projects into the platform's classification module (cls_*), end to end (issue 14):
single- and multi-label, re-runs, relabelling, --prune, dead letters and their retry, task_type, the
Python call."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

from pipeline import main as importer
from pipeline.api import ImportInputError, RoboflowStreamingImporter
from pipeline.testing.supabase_stack.stack import CLS_BUCKET
from tests.importer import importer_args, run_import
from transforms.core.convert import image_uuid, source_ref

DATASET = "c1a55000-0000-4000-8000-000000000014"
BUCKET = "cls-images"
SPLIT = {"train": "train", "valid": "val", "test": "test"}


def make_target(stack, task_type: str):
    stack.execute_sql(f"insert into cls_datasets (id, name, task_type) values ('{DATASET}', 'cls', '{task_type}')")
    options = CLS_BUCKET[BUCKET]
    stack.storage.create_bucket(BUCKET, public=options["public"], file_size_limit=options["file_size_limit"],
                                allowed_mime_types=options["allowed_mime_types"])
    return stack


def labels_by_image(stack) -> dict[str, list[str]]:
    rows = stack.sql("select i.source_ref, c.name from cls_labels l join cls_images i on i.id = l.image_id "
                     f"join cls_classes c on c.id = l.class_id where l.dataset_id = '{DATASET}'")
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["source_ref"], []).append(row["name"])
    return {k: sorted(v) for k, v in out.items()}


def assert_rows_match(emu, stack):
    labels = labels_by_image(stack)
    rows = {r["source_ref"]: r for r in stack.sql(
        "select i.source_ref, i.status, i.source, i.mime_type, i.storage_path, i.metadata, d.status as link_status, "
        "d.split from cls_images i join cls_dataset_images d on d.image_id = i.id")}
    assert set(rows) == {source_ref(DATASET, i) for i in emu.dataset.image_ids}
    for image_id in emu.dataset.image_ids:
        record = emu.dataset.image(image_id)
        ref = source_ref(DATASET, image_id)
        row = rows[ref]
        assert labels.get(ref, []) == sorted(record.labels), image_id
        want = "labeled" if record.labels else "pending"
        assert (row["status"], row["link_status"], row["split"], row["source"]) == (
            want, want, SPLIT[record.split], "dataset_import")
        assert row["metadata"]["roboflow"]["labels"] == list(record.labels)
    return rows


def test_single_label_project_imports_rows_labels_and_bytes_and_reruns_idempotently(
        roboflow_emulator, clean_supabase, tmp_path, monkeypatch):
    target = make_target(clean_supabase, "single_label")
    emu = roboflow_emulator(image_count=24, project_type="classification", seed=31, labels_shape="string")
    code, summary, letters = run_import(emu, target, tmp_path / "1", DATASET, "--prune", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == []
    labelled = [i for i in emu.dataset.image_ids if emu.dataset.image(i).labels]
    assert 0 < len(labelled) < 24  # some images were never labelled
    assert summary["target"] == "cls" and summary["annotations"] == len(labelled)
    assert summary["unannotated_images"] == 24 - len(labelled)
    rows = assert_rows_match(emu, target)
    for image_id in emu.dataset.image_ids[:6]:
        original = requests.get(emu.original_url(image_id), timeout=10).content
        assert target.read_object(BUCKET, rows[source_ref(DATASET, image_id)]["storage_path"]) == original
        assert rows[source_ref(DATASET, image_id)]["storage_path"].startswith(f"{DATASET}/roboflow/{image_id}.")
    counters = target.sql(f"select image_count, labeled_image_count, class_count from cls_datasets "
                          f"where id = '{DATASET}'")[0]
    assert counters == {"image_count": 24, "labeled_image_count": len(labelled),
                        "class_count": len(emu.dataset.classes)}
    assert target.sql("select count(*) as n from od_images") == [{"n": 0}]
    runs = target.sql(f"select id, status from od_import_runs where dataset_id = '{DATASET}'")
    assert [r["status"] for r in runs] == ["finished"]  # runs of a cls dataset are recorded like od ones
    assert target.sql("select distinct import_run_id::text as run from cls_dataset_images") == [{"run": runs[0]["id"]}]

    before = target.sql("select id, updated_at from cls_labels order by id")
    emu.reset_counters()
    code, again, _ = run_import(emu, target, tmp_path / "2", DATASET, "--prune", "--change_detection", "listing",
                                monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (again["unchanged"], again["new"], again["changed"]) == (24, 0, 0)
    assert again["details"]["saved"] == 24 and emu.counters().get("image_details", 0) == 0
    assert target.sql("select id, updated_at from cls_labels order by id") == before
    assert emu.counters().get("cdn_original", 0) == 0

    relabelled = labelled[0]
    other = next(c for c in emu.dataset.classes if c not in emu.dataset.image(relabelled).labels)
    emu.dataset.set_labels(relabelled, [other])
    gone = emu.dataset.image_ids[-1]
    emu.dataset.delete_image(gone)
    code, third, _ = run_import(emu, target, tmp_path / "3", DATASET, "--prune", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (third["changed"], third["unchanged"], third["pruned"]) == (1, 22, 1)
    assert labels_by_image(target)[source_ref(DATASET, relabelled)] == [other]
    assert_rows_match(emu, target)
    assert target.sql(f"select count(*) as n from cls_images where id = '{image_uuid(source_ref(DATASET, gone))}'"
                      ) == [{"n": 0}]


def test_multi_label_project_is_planned_keeps_every_label_and_refused_types_retry_into_cls(
        roboflow_emulator, clean_supabase, tmp_path, monkeypatch, capsys):
    target = make_target(clean_supabase, "multi_label")
    emu = roboflow_emulator(image_count=20, project_type="classification", multilabel=True, seed=32,
                            other_format_fraction=0.4, other_formats=("tiff", "webp"))
    tiffs = {i for i in emu.dataset.image_ids if emu.dataset.image(i).image_format == "tiff"}
    assert tiffs and any(len(emu.dataset.image(i).labels) > 1 for i in emu.dataset.image_ids)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    assert importer.run([*importer_args(emu, target, tmp_path / "plan", DATASET), "--plan_json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["target"] == "cls" and plan["project_type"].startswith("classification (multi-label) -> ")
    assert plan["new"] == 20 and plan["bucket"]["name"] == BUCKET and plan["bucket"]["refused_in_sample"] > 0
    assert target.list_objects(BUCKET) == [] and target.sql("select count(*) as n from cls_classes") == [{"n": 0}]
    code, summary, letters = run_import(emu, target, tmp_path / "1", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_INCOMPLETE  # the platform's cls-images bucket takes no TIFF
    assert {(d.image_id, d.error_type) for d in letters} == {(i, "mime_not_allowed") for i in tiffs}
    assert summary["imported"] == 20 - len(tiffs)

    target.storage.update_bucket(BUCKET, {"allowed_mime_types": [*CLS_BUCKET[BUCKET]["allowed_mime_types"],
                                                                 "image/tiff"]})
    code, retried, letters = run_import(emu, target, tmp_path / "2", DATASET, "--retry_dead_letters",
                                        str(tmp_path / "1" / "dead"), monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == [] and retried["new"] == len(tiffs)
    assert_rows_match(emu, target)


def test_task_type_and_module_are_checked_before_any_write(roboflow_emulator, clean_supabase, tmp_path, monkeypatch,
                                                           capsys):
    target = make_target(clean_supabase, "single_label")
    emu = roboflow_emulator(image_count=5, project_type="classification", multilabel=True)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == importer.EXIT_INPUT and len(err) == 1
    assert "task_type 'single_label'" in err[0] and "multi_label" in err[0]

    other = "c1a55000-0000-4000-8000-0000000000ff"
    target.execute_sql(f"insert into od_datasets (id, name) values ('{other}', 'od only')")
    code = importer.run(importer_args(emu, target, tmp_path, other))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == importer.EXIT_INPUT and len(err) == 1 and "is not in cls_datasets" in err[0]
    assert target.sql("select (select count(*) from cls_images) + (select count(*) from cls_classes) "
                      "+ (select count(*) from od_images) as n") == [{"n": 0}]
    assert target.list_objects(BUCKET) == []


def test_the_python_call_imports_a_classification_project(roboflow_emulator, clean_supabase, monkeypatch, capsys):
    target = make_target(clean_supabase, "single_label")
    emu = roboflow_emulator(image_count=12, project_type="classification", seed=33)
    for name in ("ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    api = RoboflowStreamingImporter(supabase_url=target.url, supabase_key=target.service_role_key,
                                    roboflow_api_url=emu.api_url)
    result = asyncio.run(api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, None,
                                            DATASET, "auto"))
    assert result.complete and result.counts["imported"] == 12
    assert result.summary["target"] == "cls"
    assert_rows_match(emu, target)
    with pytest.raises(ImportInputError) as caught:
        asyncio.run(api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, None,
                                       "c1a55000-0000-4000-8000-000000000000", "auto"))
    assert "is not in cls_datasets" in str(caught.value)
    assert json.dumps(result.summary).count(emu.config.api_key) == 0
