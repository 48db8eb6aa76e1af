"""--plan, filters and --prune against the emulator and the local Supabase stack."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline import main as importer
from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import importer_args
from tests.importer import run_import as importer_run
from transforms.core.convert import source_ref

DATASET = "22222222-3333-4444-8555-666666666666"
OTHER_DATASET = "33333333-4444-4555-8666-777777777777"
BUCKET = "od-images"
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'sync'), "
                               f"('{OTHER_DATASET}', 'other')")
    return clean_supabase


def run_import(emu, stack, out, *extra, monkeypatch):
    return importer_run(emu, stack, out, DATASET, *extra, monkeypatch=monkeypatch)


def imported_ids(stack) -> set[str]:
    rows = stack.sql(f"select i.source_ref from od_dataset_images d join od_images i on i.id = d.image_id "
                     f"where d.dataset_id = '{DATASET}'")
    return {r["source_ref"].removeprefix("roboflow:").split("@")[0] for r in rows}


def writes(stack) -> dict[str, dict[str, int]]:
    """Requests that could change something (the schema-version RPC is a read-only function)."""
    return {route: statuses for route, statuses in stack.counters()["requests"].items()
            if route.split(" ", 1)[0] in WRITES and "/rpc/od_import_schema_version" not in route}


def table_counts(stack) -> dict:
    return stack.sql("select (select count(*) from od_images) as images, (select count(*) from od_annotations) "
                     "as annotations, (select count(*) from od_dataset_images) as links, "
                     "(select count(*) from od_classes) as classes")[0]


# ---- filters --------------------------------------------------------------------------------------

def test_split_filter_imports_only_that_split_and_the_run_is_complete(roboflow_emulator, target, tmp_path,
                                                                      monkeypatch):
    emu = roboflow_emulator(image_count=60, seed=21)
    valid = {i for i in emu.dataset.image_ids if emu.dataset.image(i).split == "valid"}
    assert 0 < len(valid) < 60
    code, summary, _ = run_import(emu, target, tmp_path, "--split", "val", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and summary["complete"]
    assert imported_ids(target) == valid
    assert summary["reported_total"] == summary["listed"] == summary["imported"] == len(valid)
    assert summary["filters"] == {"split": "valid"} and summary["missing_from_listing"] == 0
    assert {r["split"] for r in target.sql("select distinct split from od_dataset_images")} == {"val"}


def test_tag_and_class_filters_are_anded_and_quoted(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=80, seed=22)
    label = Counter(b["label"] for i in emu.dataset.image_ids for b in emu.dataset.image(i).boxes).most_common(1)[0][0]
    expected = {i for i in emu.dataset.image_ids if "tag with space" in emu.dataset.image(i).tags
                and label in emu.dataset.image(i).labels}
    assert expected
    code, summary, _ = run_import(emu, target, tmp_path, "--tag", "tag with space", "--class_name", label,
                                  monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert imported_ids(target) == expected and summary["listed"] == summary["reported_total"] == len(expected)


def test_unknown_class_or_empty_match_is_exit_2_before_any_write(roboflow_emulator, target, tmp_path, monkeypatch,
                                                                 capsys):
    emu = roboflow_emulator(image_count=10, seed=23)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET, "--class_name", "no-such-class"))
    err = capsys.readouterr().err
    assert code == importer.EXIT_INPUT
    assert "--class_name 'no-such-class' is not a class of" in err and emu.dataset.classes[0] in err
    code = importer.run(importer_args(emu, target, tmp_path, DATASET, "--tag", "no-such-tag"))
    assert code == importer.EXIT_INPUT and "no image of" in capsys.readouterr().err
    assert table_counts(target)["images"] == 0 and writes(target) == {}


# ---- incremental sync and prune -------------------------------------------------------------------

def test_second_run_sends_no_write_to_postgrest_or_storage(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=30, seed=24)
    assert run_import(emu, target, tmp_path / "1", monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    target.reset_counters()
    code, summary, _ = run_import(emu, target, tmp_path / "2", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and (summary["unchanged"], summary["new"], summary["changed"]) == (30, 0, 0)
    # Only the class upsert of --class_mapping auto (ignore-duplicates), the counter refresh, the run's
    # record in od_import_runs (started, then finished) and the process's rate beats (od_import_rate_peers,
    # no dataset's row) remain.
    assert set(writes(target)) == {"POST /rest/v1/od_classes", "POST /rest/v1/rpc/od_refresh_dataset_counters",
                                   "POST /rest/v1/od_import_runs", "PATCH /rest/v1/od_import_runs",
                                   "POST /rest/v1/rpc/od_import_rate_beat"}


def test_prune_deletes_images_gone_from_roboflow_and_a_second_prune_does_nothing(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=40, seed=25)
    assert run_import(emu, target, tmp_path / "1", monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    gone = emu.dataset.image_ids[5:8]
    shared = gone[0]  # also linked from another dataset: its od_images row and object must stay
    target.execute_sql(f"insert into od_dataset_images (dataset_id, image_id) select '{OTHER_DATASET}', id "
                       f"from od_images where source_ref = '{source_ref(DATASET, shared)}'")
    objects_before = {o["name"] for o in target.list_objects(BUCKET)}
    for image_id in gone:
        emu.dataset.delete_image(image_id)

    code, summary, _ = run_import(emu, target, tmp_path / "2", "--prune", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and summary["complete"]
    assert summary["pruned"] == 3 and summary["prune"]["objects_removed"] == 2 and summary["unchanged"] == 37
    assert imported_ids(target) == set(emu.dataset.image_ids)
    refs = {r["source_ref"] for r in target.sql("select source_ref from od_images")}
    assert refs == {source_ref(DATASET, i) for i in emu.dataset.image_ids} | {source_ref(DATASET, shared)}
    removed = {f"{DATASET}/roboflow/{i}." for i in gone[1:]}
    left = {o["name"] for o in target.list_objects(BUCKET)}
    assert {o for o in objects_before if not any(o.startswith(r) for r in removed)} == left
    assert len(left) == 38
    assert target.sql(f"select count(*) as n from od_annotations a join od_images i on i.id = a.image_id "
                      f"where i.source_ref in ({', '.join(repr(source_ref(DATASET, i)) for i in gone)})"
                      )[0]["n"] == 0
    assert target.sql(f"select image_count from od_datasets where id = '{DATASET}'")[0]["image_count"] == 37

    target.reset_counters()
    code, again, _ = run_import(emu, target, tmp_path / "3", "--prune", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and again["pruned"] == 0
    assert not any(route.startswith("DELETE") for route in writes(target))


def test_prune_mark_sets_and_clears_source_missing_at_without_deleting(roboflow_emulator, target, tmp_path,
                                                                       monkeypatch):
    emu = roboflow_emulator(image_count=30, seed=26)
    assert run_import(emu, target, tmp_path / "1", monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    gone, back = emu.dataset.image_ids[:2], emu.dataset.image_ids[10]
    for image_id in gone:
        emu.dataset.delete_image(image_id)
    target.execute_sql(f"update od_dataset_images d set source_missing_at = '2020-01-01' from od_images i "
                       f"where i.id = d.image_id and i.source_ref = '{source_ref(DATASET, back)}'")

    def marks():
        return {r["source_ref"]: r["source_missing_at"] for r in target.sql(
            "select i.source_ref, d.source_missing_at from od_dataset_images d join od_images i on i.id = d.image_id "
            "where d.source_missing_at is not null")}

    code, summary, _ = run_import(emu, target, tmp_path / "2", "--prune", "--prune_mode", "mark",
                                  monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert (summary["pruned"], summary["prune"]["marked"], summary["prune"]["unmarked"]) == (2, 2, 1)
    first = marks()
    assert set(first) == {source_ref(DATASET, i) for i in gone}
    assert table_counts(target)["images"] == 30 and len(target.list_objects(BUCKET)) == 30

    target.reset_counters()
    code, again, _ = run_import(emu, target, tmp_path / "3", "--prune", "--prune_mode", "mark",
                                monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and again["prune"]["marked"] == 2 and again["prune"]["unmarked"] == 0
    assert marks() == first  # the time it first went missing is kept
    assert "PATCH /rest/v1/od_dataset_images" not in writes(target)


def test_prune_is_skipped_when_the_listing_came_up_short(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=30, seed=27)
    assert run_import(emu, target, tmp_path / "1", monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    emu.dataset.delete_image(emu.dataset.image_ids[0])
    emu.set_faults(FaultConfig(count_gap=2))  # Roboflow counts 2 images its search never lists
    code, summary, _ = run_import(emu, target, tmp_path / "2", "--prune", monkeypatch=monkeypatch)
    assert code == importer.EXIT_INCOMPLETE
    assert summary["pruned"] == 0 and summary["prune"]["skipped"] == 3 and "incomplete" in summary["prune"]["note"]
    assert table_counts(target)["images"] == 30


# ---- plan -----------------------------------------------------------------------------------------

def plan_run(emu, stack, out, *extra, monkeypatch, capsys) -> tuple[int, dict | str]:
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    capsys.readouterr()  # drop what earlier runs printed
    plan_flags = [] if "--plan_json" in extra else ["--plan"]  # --plan_json alone asks for a plan too
    code = importer.run(importer_args(emu, stack, out, DATASET, *plan_flags, *extra))
    text = capsys.readouterr().out
    return code, json.loads(text) if "--plan_json" in extra else text


def test_plan_counts_match_the_project_and_write_nothing(roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=70, seed=28, versions=2)
    assert run_import(emu, target, tmp_path / "1", "--split", "train", monkeypatch=monkeypatch)[0] == 0
    train = {i for i in emu.dataset.image_ids if emu.dataset.image(i).split == "train"}
    gone = sorted(train)[0]
    emu.dataset.delete_image(gone)
    live = emu.dataset.image_ids
    before = table_counts(target)
    target.reset_counters()

    code, plan = plan_run(emu, target, tmp_path / "2", "--plan_json", "--roboflow_version", "2",
                          "--roboflow_rate_limit", "50", monkeypatch=monkeypatch, capsys=capsys)
    assert code == importer.EXIT_OK and plan["can_run"]
    records = [emu.dataset.image(i) for i in live]
    assert plan["listing"]["listed"] == plan["listing"]["reported_total"] == len(live)
    assert plan["splits"] == {s: sum(r.split == s for r in records) for s in ("train", "valid", "test")}
    assert plan["classes"] == {c: sum(c in r.labels for r in records) for c in sorted(emu.dataset.classes)}
    assert plan["already_imported"] == len(train) - 1 and plan["new"] == len(live) - len(train) + 1
    assert plan["not_in_roboflow"] == 1
    sizes = [r.byte_size for r in records if r.id not in train]
    assert min(sizes) * plan["new"] <= plan["bytes"]["to_upload_estimate"] <= max(sizes) * plan["new"]
    assert plan["time"]["roboflow_calls"] == len(live) + plan["listing"]["pages"]
    assert plan["time"]["seconds_estimate"] == pytest.approx(plan["time"]["roboflow_calls"] / 50, abs=0.1)
    assert plan["version_splits"] == emu.dataset.version(2).stats.splits
    assert plan["class_mapping"]["would_create"] == [] and plan["class_mapping"]["unmapped"] == []
    assert writes(target) == {} and table_counts(target) == before


def test_plan_with_auto_mapping_lists_classes_it_would_create_and_creates_none(
        roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=20, seed=29)
    code, text = plan_run(emu, target, tmp_path, "--split", "train", monkeypatch=monkeypatch, capsys=capsys)
    assert code == importer.EXIT_OK
    lines = {line.split(None, 2)[0] + " " + line.split(None, 2)[1]: line for line in text.splitlines()
             if line.startswith("  ") and len(line.split()) > 2}
    assert "classes to create" in text and all(c in lines["classes to"] for c in emu.dataset.classes)
    assert "--split 'valid'" not in text and "--split 'train'" in text
    assert "the import can run (exit 0)" in text
    assert target.sql("select count(*) as n from od_classes where dataset_id is not null")[0]["n"] == 0
    assert writes(target) == {}


def test_plan_exits_2_and_names_unmapped_classes(roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=15, seed=30)
    mapping = tmp_path / "mapping.json"
    first, *rest = sorted(emu.dataset.classes)
    mapping.write_text(json.dumps([{"source_name": first, "create_new": True}]))
    code, plan = plan_run(emu, target, tmp_path, "--plan_json", "--class_mapping", str(mapping),
                          monkeypatch=monkeypatch, capsys=capsys)
    assert code == importer.EXIT_INPUT and not plan["can_run"]
    assert plan["class_mapping"]["unmapped"] == rest and plan["class_mapping"]["would_create"] == [first]
    assert all(repr(c) in plan["reasons"][0] for c in rest)
    assert plan["listing"]["listed"] == 15  # the rest of the plan is still there
    assert writes(target) == {}
