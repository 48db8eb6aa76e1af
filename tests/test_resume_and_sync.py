"""Issue 17: a resume costs the images left, a listing sync the images whose summary changed.

The emulator counts every request by route, so the tests assert the details calls themselves.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from pipeline import main as importer
from tests.importer import run_import, start_import

DATASET = "17171717-0000-4000-8000-000000000017"


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'resume')")
    return clean_supabase


def written(stack) -> int:
    return stack.sql(f"select count(*) as n from od_dataset_images where dataset_id = '{DATASET}' "
                     "and import_hash is not null")[0]["n"]


def runs(stack) -> list[dict]:
    return stack.sql(f"select id, status, attempts, run_name from od_import_runs where dataset_id = '{DATASET}' "
                     "order by started_at")


def boxes_in_db(stack, image_id: str) -> list[list[float]]:
    rows = stack.sql(f"""select a.bbox_x, a.bbox_y from od_annotations a join od_images i on i.id = a.image_id
                         where i.metadata->'roboflow'->>'image_id' = '{image_id}' order by 1, 2""")
    return [[round(r["bbox_x"], 4), round(r["bbox_y"], 4)] for r in rows]


def test_kill_then_resume_fetches_only_the_images_left(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=240, seed=171, image_kb_max=6)
    killed = start_import(emu, target, tmp_path / "killed", DATASET, "--run_id", "job-1",
                          "--roboflow_rate_limit", "40")
    deadline = time.monotonic() + 180
    while written(target) < 80 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    done = written(target)
    assert 0 < done < 240
    [interrupted] = runs(target)
    assert (interrupted["status"], interrupted["run_name"]) == ("running", "job-1")

    emu.reset_counters()
    code, summary, _ = run_import(emu, target, tmp_path / "resumed", DATASET, "--run_id", "job-2",
                                  monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert emu.counters().get("image_details") == 240 - done  # no details call for what the killed run wrote
    assert summary["details"]["skipped"] == {"resumed": done}
    assert (summary["details"]["saved"], summary["unchanged"]) == (done, done)
    # An image the kill caught between its rows (od_images written, its dataset link not) is fetched again
    # and counts as changed, not new (seen once in a full suite: 157 new + 1 changed of 158 fetched).
    assert summary["new"] + summary["changed"] == 240 - done and summary["changed"] <= 50
    assert summary["run"]["id"] == interrupted["id"] and summary["run"]["resumed"]
    assert any("next full sync" in note for note in summary["details"]["notes"])
    assert runs(target) == [{"id": interrupted["id"], "status": "finished", "attempts": 2, "run_name": "job-2"}]
    assert written(target) == 240

    emu.reset_counters()  # the run finished: the next one is a new, full sync (exact: one call per image)
    code, again, _ = run_import(emu, target, tmp_path / "again", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and not again["run"]["resumed"] and again["unchanged"] == 240
    assert emu.counters().get("image_details") == 240 and again["details"]["saved"] == 0


def test_listing_mode_catches_a_changed_summary_and_misses_a_geometry_only_edit(
        roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=40, seed=172, image_kb_max=6, empty_fraction=0.0)
    assert run_import(emu, target, tmp_path / "first", DATASET, monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    relabelled, moved = emu.dataset.image_ids[3], emu.dataset.image_ids[7]
    classes = emu.dataset.classes
    boxes = emu.dataset.image(relabelled).boxes
    other = next(c for c in classes if c != boxes[0]["label"])
    emu.dataset.set_boxes(relabelled, [*boxes, {"label": other, "x": 40, "y": 40, "width": 30, "height": 30}])
    # Same boxes, same classes, each moved 10 px: the listing summary (class counts) cannot tell.
    emu.dataset.set_boxes(moved, [{**box, "x": box["x"] + 10} for box in emu.dataset.image(moved).boxes])
    geometry_before = boxes_in_db(target, moved)

    emu.reset_counters()
    code, listing, _ = run_import(emu, target, tmp_path / "listing", DATASET, "--change_detection", "listing",
                                  monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert emu.counters().get("image_details") == 1  # only the relabelled image
    assert (listing["changed"], listing["unchanged"]) == (1, 39)
    assert listing["details"]["skipped"] == {"unchanged_summary": 39}
    assert any("--change_detection exact" in note for note in listing["details"]["notes"])
    assert len(boxes_in_db(target, relabelled)) == len(boxes) + 1
    assert boxes_in_db(target, moved) == geometry_before  # documented: the geometry-only edit is missed

    emu.reset_counters()
    code, exact, _ = run_import(emu, target, tmp_path / "exact", DATASET, monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK
    assert emu.counters().get("image_details") == 40
    assert (exact["changed"], exact["unchanged"]) == (1, 39)
    assert boxes_in_db(target, moved) != geometry_before


def test_plan_counts_details_calls_for_both_modes(roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=30, seed=173, image_kb_max=6)
    assert run_import(emu, target, tmp_path / "first", DATASET, monkeypatch=monkeypatch)[0] == importer.EXIT_OK
    changed = emu.dataset.image_ids[0]
    boxes = emu.dataset.image(changed).boxes
    emu.dataset.set_boxes(changed, [*boxes, {"label": emu.dataset.classes[0], "x": 9, "y": 9, "width": 8,
                                             "height": 8}])
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    from tests.importer import importer_args
    capsys.readouterr()
    assert importer.run(importer_args(emu, target, tmp_path / "plan", DATASET, "--plan_json",
                                      "--roboflow_rate_limit", "10")) == 0
    plan = json.loads(capsys.readouterr().out)
    modes = plan["change_detection"]
    pages = plan["listing"]["pages"]
    assert modes["exact"]["details_calls"] == 30 and modes["exact"]["roboflow_calls"] == pages + 30
    assert (modes["listing"]["details_calls"], modes["listing"]["unchanged_summary"]) == (1, 29)
    assert modes["listing"]["seconds_estimate"] == round((pages + 1) / 10, 1)
    assert plan["resume"] is None


def test_images_imported_without_a_summary_get_one_on_the_next_sync(roboflow_emulator, target, tmp_path,
                                                                     monkeypatch):
    emu = roboflow_emulator(image_count=20, seed=174, image_kb_max=6)
    code, first, _ = run_import(emu, target, tmp_path / "token", DATASET, "--roboflow_listing", "token",
                                "--change_detection", "listing", monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and first["new"] == 20
    assert any("20 listed images came without" in note for note in first["details"]["notes"])
    unknown = (f"select count(*) as n from od_dataset_images where dataset_id = '{DATASET}' "
               "and listing_fingerprint is null")
    assert target.sql(unknown)[0]["n"] == 20  # the workspace search gave no class counts

    emu.reset_counters()  # project search pages have them: unchanged images get theirs stored, nothing else
    code, second, _ = run_import(emu, target, tmp_path / "auto", DATASET, "--change_detection", "listing",
                                 monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and second["unchanged"] == 20 and emu.counters().get("image_details") == 20
    assert target.sql(unknown)[0]["n"] == 0

    emu.reset_counters()
    code, third, _ = run_import(emu, target, tmp_path / "again", DATASET, "--change_detection", "listing",
                                monkeypatch=monkeypatch)
    assert code == importer.EXIT_OK and third["details"]["skipped"] == {"unchanged_summary": 20}
    assert emu.counters().get("image_details", 0) == 0
