"""Crashes, re-runs and outages (issue 4 §2): the final state is what an uninterrupted run leaves."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import pytest

from pipeline import main as importer
from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import run_import, start_import
from transforms.dead_letters import read_dead_letters

BUCKET = "od-images"
DATASET_A = "aaaaaaaa-0000-4000-8000-00000000000a"
DATASET_B = "bbbbbbbb-0000-4000-8000-00000000000b"


@pytest.fixture
def stack(clean_supabase):
    for dataset in (DATASET_A, DATASET_B):
        clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{dataset}', '{dataset[:8]}')")
    return clean_supabase


def imported_count(stack, dataset: str) -> int:
    return stack.sql(f"select count(*) as n from od_dataset_images where dataset_id = '{dataset}'")[0]["n"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def snapshot(stack, dataset: str) -> dict:
    """Everything a user sees of one dataset's import, keyed by Roboflow id, free of dataset-specific ids
    (class ids and the import hash, which covers them, differ between datasets)."""
    rows = stack.sql(f"""
        select i.metadata->'roboflow'->>'image_id' as rid, i.file_hash, i.mime_type, i.width, i.height,
               i.status, i.original_filename, i.tags, i.file_size_bytes, di.split, di.annotation_count,
               di.status as link_status,
               (select coalesce(json_agg(json_build_array(c.name, a.bbox_x, a.bbox_y, a.bbox_width, a.bbox_height,
                                                          a.polygon, a.source_key) order by a.source_key), '[]')
                  from od_annotations a join od_classes c on c.id = a.class_id where a.image_id = i.id) as annotations
        from od_images i join od_dataset_images di on di.image_id = i.id
        where di.dataset_id = '{dataset}'""")
    images = {r.pop("rid"): r for r in rows}
    objects = {}
    for obj in stack.list_objects(BUCKET):
        if obj["name"].startswith(dataset + "/"):
            rid = obj["name"].rsplit("/", 1)[-1].split(".")[0]
            objects[rid] = hashlib.sha256(stack.read_object(BUCKET, obj["name"])).hexdigest()
    counters = stack.sql(f"select image_count, annotated_image_count, annotation_count, class_count "
                         f"from od_datasets where id = '{dataset}'")[0]
    return {"images": images, "objects": objects, "counters": counters}


def orphans(stack) -> set[str]:
    stored = {o["name"] for o in stack.list_objects(BUCKET)}
    return stored - {r["storage_path"] for r in stack.sql("select storage_path from od_images")}


def test_sigkill_half_way_then_rerun_equals_an_uninterrupted_run(roboflow_emulator, stack, tmp_path):
    emu = roboflow_emulator(image_count=600, project_type="instance-segmentation", seed=21, image_kb_max=8,
                            faults=FaultConfig(api_latency_ms=25, cdn_latency_ms=10))
    killed = start_import(emu, stack, tmp_path / "killed", DATASET_A)
    wait_for(lambda: imported_count(stack, DATASET_A) >= 300 or killed.poll() is not None, 180, "half the import")
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    done_before_kill = imported_count(stack, DATASET_A)
    assert 0 < done_before_kill < 600

    resumed = start_import(emu, stack, tmp_path / "resumed", DATASET_A)
    assert resumed.wait(300) == importer.EXIT_OK, (tmp_path / "resumed" / "stderr.txt").read_text()[-2000:]
    resumed_summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed_summary["unchanged"] >= done_before_kill - 50  # finished images are skipped, not redone

    clean = start_import(emu, stack, tmp_path / "clean", DATASET_B)
    assert clean.wait(300) == importer.EXIT_OK

    resumed_state, clean_state = snapshot(stack, DATASET_A), snapshot(stack, DATASET_B)
    assert len(resumed_state["images"]) == len(resumed_state["objects"]) == 600
    assert resumed_state == clean_state
    assert orphans(stack) == set()


def test_retry_dead_letters_reimports_exactly_those_images(roboflow_emulator, stack, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=80, seed=23, image_kb_max=6,
                            faults=FaultConfig(eventually_consistent=4, eventual_tries=50))
    code, first, letters = run_import(emu, stack, tmp_path / "first", DATASET_A, monkeypatch=monkeypatch)
    stuck = set(emu.fault_targets()["eventually_consistent"])
    assert code == importer.EXIT_INCOMPLETE and {d.image_id for d in letters} == stuck

    emu.faults = FaultConfig()  # Roboflow caught up
    emu.reset_counters()
    code, retry, letters = run_import(emu, stack, tmp_path / "retry", DATASET_A, "--retry_dead_letters",
                                      str(tmp_path / "first" / "dead"), monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and letters == []
    assert (retry["listed"], retry["new"], retry["unchanged"]) == (4, 4, 0)
    counters = emu.counters()
    assert counters.get("image_details") == 4 and counters.get("cdn_original") == 4
    assert counters.get("search", 0) + counters.get("search_v1", 0) <= 1  # preflight's count, no listing
    assert imported_count(stack, DATASET_A) == 80


def test_retry_dead_letters_refuses_a_directory_without_letters(roboflow_emulator, stack, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=5, seed=24)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    from tests.importer import importer_args

    code = importer.run(importer_args(emu, stack, tmp_path, DATASET_A, "--retry_dead_letters",
                                      str(tmp_path / "empty")))
    assert code == importer.EXIT_INPUT and imported_count(stack, DATASET_A) == 0


def test_supabase_outage_mid_run_is_waited_out_or_dead_lettered(roboflow_emulator, stack, tmp_path):
    emu = roboflow_emulator(image_count=500, seed=25, image_kb_max=6,
                            faults=FaultConfig(api_latency_ms=40, cdn_latency_ms=10))
    run = start_import(emu, stack, tmp_path / "run", DATASET_A)
    wait_for(lambda: imported_count(stack, DATASET_A) >= 100 or run.poll() is not None, 180, "the import to start")
    assert run.poll() is None, "the import finished before the outage"
    stack.stop_services()
    time.sleep(20)
    stack.start_services()
    code = run.wait(400)
    assert code in (importer.EXIT_OK, importer.EXIT_INCOMPLETE), (tmp_path / "run" / "stderr.txt").read_text()[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    letters = read_dead_letters(str(tmp_path / "run" / "dead"))
    rows = imported_count(stack, DATASET_A)
    assert summary["listed"] == 500 == rows + len(letters)  # nothing silently dropped
    assert summary["imported"] == rows and summary["failed"] == len(letters)
    assert stack.sql("select count(*) - count(distinct source_ref) as n from od_images")[0]["n"] == 0
    print(f"outage: {rows} imported, {len(letters)} dead-lettered, retries {summary['retries']}")
