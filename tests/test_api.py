"""The platform's Python call and the progress output, end to end against the stand-ins."""

from __future__ import annotations

import logging
import os
import re

import pytest

from pipeline import main as importer
from pipeline.api import ImportInputError, ImportResult, RoboflowStreamingImporter
from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import importer_args, run_import

DATASET = "22222222-3333-4444-8555-666666666666"
BUCKET = "od-images"
LINE = re.compile(r"^(\d+)/(\d+) images \(\d+%\) \| (?:[\d.]+|-) img/s \| (\d+) failed \| (?:ETA \S+|done in \S+)$")


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'api')")
    return clean_supabase


@pytest.fixture
def no_keys_in_env(monkeypatch):
    for name in ("ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def platform_mapping(emu) -> list[dict]:
    """What the platform's import request sends: here, create every class, keep Roboflow's colour."""
    return [{"source_name": name, "target_class_id": None, "create_new": True, "skip": False, "color": None}
            for name in emu.dataset.classes]


def test_import_dataset_end_to_end_with_progress_callbacks(roboflow_emulator, target, no_keys_in_env, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    emu = roboflow_emulator(image_count=120, seed=21, image_kb_max=6, faults=FaultConfig(deleted_after_listing=2))
    calls = []
    importer_api = RoboflowStreamingImporter(target.url, target.service_role_key, roboflow_api_url=emu.api_url)

    result = importer_api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, 2, DATASET,
                                         platform_mapping(emu), concurrency=8, progress_callback=calls.append)

    assert isinstance(result, ImportResult)
    deleted = set(emu.fault_targets()["deleted_after_listing"])
    assert result.counts == {"listed": 120, "imported": 118, "new": 118, "changed": 0, "unchanged": 0, "failed": 2}
    assert not result.complete and result.output_dir is None
    assert {(e["image_id"], e["step"], e["error_type"]) for e in result.errors} == {
        (i, "fetch_details", "not_found") for i in deleted}
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 118
    assert len(target.list_objects(BUCKET)) == 118

    done = [p.done for p in calls]
    assert done == sorted(done) and len(calls) >= 3
    assert all(later - earlier <= 50 for earlier, later in zip([0, *done], done, strict=False))
    final = calls[-1]
    assert final.final and final.done == final.total == 120 and final.failed == 2
    assert all(p.total == 120 for p in calls if p.done)

    assert "ROBOFLOW_API_KEY" not in os.environ and "SUPABASE_SERVICE_ROLE_KEY" not in os.environ
    out, err = capfd.readouterr()
    assert out == ""
    for text in (out, err, caplog.text, repr(result.to_dict()), repr(importer_api)):
        assert emu.config.api_key not in text and target.service_role_key not in text


def test_auto_mapping_creates_classes_with_roboflow_colours(roboflow_emulator, target, no_keys_in_env, tmp_path):
    emu = roboflow_emulator(image_count=8, seed=2, image_kb_max=6)
    result = RoboflowStreamingImporter(target.url, target.service_role_key, roboflow_api_url=emu.api_url,
                                       output_dir=str(tmp_path / "out")).import_dataset(
        emu.config.api_key, emu.config.workspace, emu.config.project, None, DATASET, "auto", job_id="job-42")
    assert result.complete and result.counts["imported"] == 8 and result.errors == []
    assert (tmp_path / "out" / "summary.json").is_file() and result.output_dir == str(tmp_path / "out")
    assert target.sql("select run_name, status from od_import_runs") == [{"run_name": "job-42", "status": "finished"}]
    assert result.summary["run"]["name"] == "job-42" and not result.summary["run"]["resumed"]
    classes = {r["name"]: r["color"] for r in target.sql(
        f"select name, color from od_classes where dataset_id = '{DATASET}'")}
    assert classes == emu.dataset.colors and len(classes) >= 2


def test_bad_mapping_raises_the_typed_error_and_writes_nothing(roboflow_emulator, target, no_keys_in_env):
    emu = roboflow_emulator(image_count=5)
    mapping = platform_mapping(emu)[1:]  # the first Roboflow class has no entry
    api = RoboflowStreamingImporter(target.url, target.service_role_key, roboflow_api_url=emu.api_url)
    calls = []
    with pytest.raises(ImportInputError) as info:
        api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, None, DATASET, mapping,
                           progress_callback=calls.append)
    message = info.value.message
    assert message.startswith("Roboflow classes with no class mapping entry: ") and "\n" not in message
    assert repr(emu.dataset.classes[0]) in message and calls == []
    assert target.sql("select count(*) as n from od_classes where dataset_id is not null")[0]["n"] == 0
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 0 and target.list_objects(BUCKET) == []
    assert "ROBOFLOW_API_KEY" not in os.environ


@pytest.mark.parametrize("args,match", [
    (("", "ws", "p", None, DATASET, "auto"), "api_key is empty"),
    (("k" * 20, "ws", "p", "3", DATASET, "auto"), "version must be an integer"),
    (("k" * 20, "ws", "p", None, DATASET, {"helmet": "x"}), "class mapping in the request must be a JSON list"),
    (("k" * 20, "ws", "p", None, DATASET, [{"source_name": "a"}]), "must set exactly one of"),
])
def test_malformed_call_is_refused_before_any_request(args, match, no_keys_in_env):
    api = RoboflowStreamingImporter("http://127.0.0.1:9", "service-key-not-used", roboflow_api_url="http://127.0.0.1:9")
    with pytest.raises(ImportInputError, match=match):
        api.import_dataset(*args)


@pytest.mark.parametrize("flag", ["--plan", "--plan_json"])
def test_plan_flags_in_pipeline_args_are_refused_not_run_as_an_import(roboflow_emulator, target, no_keys_in_env,
                                                                     flag):
    emu = roboflow_emulator(image_count=5)
    api = RoboflowStreamingImporter(target.url, target.service_role_key, roboflow_api_url=emu.api_url,
                                    pipeline_args=[flag])
    with pytest.raises(ImportInputError, match="^--plan only prints a plan, from the command line"):
        api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, None, DATASET, "auto")
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 0 and target.list_objects(BUCKET) == []
    assert emu.counters().get("image_details", 0) == 0


def test_missing_supabase_settings_name_the_environment(no_keys_in_env):
    with pytest.raises(ImportInputError, match="no Supabase URL; pass supabase_url= or set SUPABASE_URL"):
        RoboflowStreamingImporter().import_dataset("k" * 20, "ws", "p", None, DATASET, "auto")


def test_cli_prints_plain_progress_lines_on_stderr_unless_quiet(roboflow_emulator, target, tmp_path, monkeypatch,
                                                                 capsys):
    emu = roboflow_emulator(image_count=60, seed=8, image_kb_max=6)
    code, _, _ = run_import(emu, target, tmp_path / "1", DATASET, "--progress_interval", "0.05",
                            monkeypatch=monkeypatch)
    out, err = capsys.readouterr()
    assert code == importer.EXIT_OK
    lines = [m.groups() for m in map(LINE.match, err.splitlines()) if m]
    assert lines, err
    assert lines[-1] == ("60", "60", "0") and "done in" in err.splitlines()[-1]
    assert [int(done) for done, _, _ in lines] == sorted(int(done) for done, _, _ in lines)
    assert "\r" not in err and "images (" not in out  # not a terminal: plain lines, none on stdout

    code, summary, _ = run_import(emu, target, tmp_path / "2", DATASET, "--progress_interval", "0.05", "--quiet",
                                  monkeypatch=monkeypatch)
    out, err = capsys.readouterr()
    assert code == importer.EXIT_OK and summary["unchanged"] == 60
    assert not any(LINE.match(line) for line in err.splitlines()) and "img/s |" not in err


def test_non_positive_progress_interval_is_an_input_error(roboflow_emulator, target, tmp_path, monkeypatch, capsys):
    emu = roboflow_emulator(image_count=1)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET, "--progress_interval", "0"))
    assert code == importer.EXIT_INPUT
    assert "--progress_interval must be a positive number of seconds (got 0.0)" in capsys.readouterr().err
