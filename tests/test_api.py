"""The platform's Python call (pipeline/api.py) and the progress output, end to end against the stand-ins."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydantic
import pytest

from pipeline import main as importer
from pipeline.api import (
    ImportCancelled,
    ImportFailed,
    ImportInputError,
    ImportResult,
    RoboflowStreamingImporter,
    streaming_import_from_roboflow,
)
from pipeline.testing.roboflow_emulator import FaultConfig
from tests.importer import REPO, importer_args, run_import
from tests.test_resilience import orphans, snapshot

DATASET = "22222222-3333-4444-8555-666666666666"
OTHER_DATASET = "33333333-4444-4555-8666-777777777777"
BUCKET = "od-images"
LINE = re.compile(r"^(\d+)/(\d+) images \(\d+%\) \| (?:[\d.]+|-) img/s \| (\d+) failed \| (?:ETA \S+|done in \S+)$")


@pytest.fixture
def target(clean_supabase):
    for dataset in (DATASET, OTHER_DATASET):
        clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{dataset}', 'api')")
    return clean_supabase


@pytest.fixture
def no_keys_in_env(monkeypatch):
    for name in ("ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def platform_mapping(emu) -> list[dict]:
    """What the platform's import request sends: here, create every class, keep Roboflow's colour."""
    return [{"source_name": name, "target_class_id": None, "create_new": True, "skip": False, "color": None}
            for name in emu.dataset.classes]


class MappingEntry(pydantic.BaseModel):
    """An entry as the platform's FastAPI request model may hold it."""

    source_name: str
    target_class_id: str | None = None
    create_new: bool = False
    skip: bool = False
    color: str | None = None


def stand_ins(emu, stack) -> dict:
    """Where the stand-ins are: the importer settings every call here adds to the platform's arguments."""
    return {"supabase_url": stack.url, "supabase_key": stack.service_role_key, "roboflow_api_url": emu.api_url}


def platform_call(emu, stack, dataset: str = DATASET, **extra) -> dict:
    """The keyword arguments of the platform's call site, pointed at the stand-ins."""
    return {"api_key": emu.config.api_key, "workspace": emu.config.workspace, "project": emu.config.project,
            "dataset_id": dataset, "class_mapping": platform_mapping(emu), "concurrency": 10, "job_id": "job-1",
            "checkpoint": None, **stand_ins(emu, stack), **extra}


def imported_count(stack, dataset: str) -> int:
    return stack.sql(f"select count(*) as n from od_dataset_images where dataset_id = '{dataset}'")[0]["n"]


def assert_progress_steps(done: list[int], total: int) -> None:
    """In order, at least every 10 images, ending at the total."""
    assert done == sorted(done) and done[-1] == total
    steps = [later - earlier for earlier, later in zip([0, *done], done, strict=False)]
    assert max(steps) <= 10, f"steps over 10: {done}"


def test_platform_call_never_blocks_the_event_loop(roboflow_emulator, target, no_keys_in_env):
    """(1) The platform's call awaited in a web service's loop (pipeline/testing/platform_backend.py, own process)
    while a heartbeat task on that loop ticks every 10 ms; (2) its 3-argument callbacks on the loop thread."""
    emu = roboflow_emulator(image_count=300, seed=31, image_kb_max=6)
    arguments = platform_call(emu, target)
    backend = subprocess.run([sys.executable, "-m", "pipeline.testing.platform_backend"], input=json.dumps(arguments),
                             capture_output=True, text=True, cwd=REPO, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert backend.returncode == 0, backend.stderr[-3000:]
    report = json.loads(backend.stdout)
    beat = report["heartbeat"]
    print(f"\nheartbeat over a 300-image import: {beat}")  # the figures quoted in the README
    assert beat["min_ticks_per_second"] >= 20, beat
    assert report["result"] == {"success": True, "images_imported": 300, "annotations_imported":
                                target.sql("select count(*) as n from od_annotations")[0]["n"],
                                "images_skipped": 0, "images_failed": 0, "errors": []}
    calls = report["calls"]
    assert all(on_loop for *_, on_loop in calls)
    assert all(total == 300 for _, total, _, _ in calls)
    assert_progress_steps([processed for processed, *_ in calls], 300)
    assert calls[-1][2].startswith("300/300 images (100%)") and "done in" in calls[-1][2]
    assert imported_count(target, DATASET) == 300
    assert emu.config.api_key not in backend.stdout + backend.stderr


def test_progress_callbacks_run_on_the_loop_thread_and_a_raising_one_does_not_stop_the_import(
        roboflow_emulator, target, no_keys_in_env, caplog):
    emu = roboflow_emulator(image_count=25, seed=32, image_kb_max=6)
    calls = []

    async def on_progress(processed, total, message):  # the platform's callback may be a coroutine function
        calls.append((processed, total, threading.get_ident()))
        if len(calls) == 1:
            raise RuntimeError(f"job row update failed for key {emu.config.api_key}")

    async def main():
        return threading.get_ident(), await streaming_import_from_roboflow(**platform_call(
            emu, target, progress_callback=on_progress,
            class_mapping=[MappingEntry(**entry) for entry in platform_mapping(emu)]))

    loop_thread, result = asyncio.run(main())
    assert result.success and result.images_imported == 25 and result.job_id == "job-1"
    assert {thread for *_, thread in calls} == {loop_thread}
    assert_progress_steps([processed for processed, _, _ in calls], 25)
    assert "progress callback failed (the import goes on): RuntimeError" in caplog.text
    assert emu.config.api_key not in caplog.text


def test_cancel_half_way_then_rerun_equals_an_uninterrupted_import(roboflow_emulator, target, no_keys_in_env):
    """(3) Cancelling the awaiting task stops the worker; a re-run completes what an uninterrupted run does."""
    # A key limited to 20 calls/s keeps the second half >= 4 s long, whatever the importer's concurrency:
    # latency alone did not (CI once saw all 160 written before the cancel reached the worker).
    emu = roboflow_emulator(image_count=160, seed=33, image_kb_max=6,
                            faults=FaultConfig(api_latency_ms=20, cdn_latency_ms=10, rate_limit_per_s=20))
    half_way = asyncio.Event()

    def on_progress(processed, total, message):
        if processed >= total // 2:
            half_way.set()

    async def cancelled_run():
        task = asyncio.ensure_future(streaming_import_from_roboflow(
            **platform_call(emu, target, progress_callback=on_progress)))
        await asyncio.wait([task, asyncio.ensure_future(half_way.wait())], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with pytest.raises(ImportCancelled, match=r"^import cancelled after \d+ of 160 images; .* run the same "
                                                  r"import again to complete it") as info:
            await task
        return info.value

    cancelled = asyncio.run(cancelled_run())
    assert isinstance(cancelled, asyncio.CancelledError) and worker_pids() == []
    done_at_cancel = imported_count(target, DATASET)
    time.sleep(1.5)  # a worker still running would go on writing
    assert imported_count(target, DATASET) == done_at_cancel and 0 < done_at_cancel < 160

    emu.faults = FaultConfig()  # the limit only made room for the cancel
    resumed = asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target)))
    assert resumed.success and resumed.images_skipped >= done_at_cancel - 50
    assert resumed.images_imported + resumed.images_skipped == 160
    clean = asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target, dataset=OTHER_DATASET)))
    assert clean.success and clean.images_imported == 160
    resumed_state = snapshot(target, DATASET)
    assert len(resumed_state["images"]) == len(resumed_state["objects"]) == 160
    assert resumed_state == snapshot(target, OTHER_DATASET)
    assert orphans(target) == set()


def worker_pids(parent: int | None = None) -> list[int]:
    """The live import workers of ``parent`` (this process), from /proc: the worker's pid is not in the API."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == (parent or os.getpid()) and fields[0] != "Z" and b"pipeline.import_worker" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_worker_raises_import_failed_and_a_rerun_completes(roboflow_emulator, target, no_keys_in_env):
    """A worker that dies (the OOM killer, say) fails the call, not the caller; running again completes it."""
    emu = roboflow_emulator(image_count=80, seed=36, image_kb_max=6, faults=FaultConfig(api_latency_ms=20))
    killed = []

    def kill_the_worker(processed, total, message):
        if not killed:
            killed.extend(worker_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(ImportFailed, match=r"^the import's worker process exited with code -9 before reporting a "
                                           r"result .* running the same import again resumes it$"):
        asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target, progress_callback=kill_the_worker)))
    assert len(killed) == 1 and imported_count(target, DATASET) < 80
    emu.faults = FaultConfig()
    rerun = asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target)))
    assert rerun.success and rerun.images_imported + rerun.images_skipped == 80
    assert imported_count(target, DATASET) == 80


def test_a_worker_stops_when_its_caller_dies(roboflow_emulator, target, no_keys_in_env):
    """The web service killed mid-import (a deploy, the OOM killer): its worker does not import on, orphaned."""
    emu = roboflow_emulator(image_count=200, seed=37, image_kb_max=6, faults=FaultConfig(api_latency_ms=20))
    service = subprocess.Popen([sys.executable, "-m", "pipeline.testing.platform_backend"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        service.stdin.write(json.dumps(platform_call(emu, target)).encode() + b"\n")
        service.stdin.flush()
        wait_for(lambda: imported_count(target, DATASET) > 0, 180, "the first imported image")
        workers = worker_pids(service.pid)
    finally:
        service.kill()
        service.wait(30)
    assert len(workers) == 1
    wait_for(lambda: not alive(workers[0]), 5, "the orphaned worker to exit")
    done = imported_count(target, DATASET)
    time.sleep(1.5)
    assert imported_count(target, DATASET) == done < 200


def test_two_concurrent_imports_with_different_keys_never_see_each_others_key(
        roboflow_emulator, target, no_keys_in_env, tmp_path, caplog, capfd):
    """(4) Two imports at once in one process, each with its own Roboflow key and dataset."""
    caplog.set_level(logging.INFO)
    first = roboflow_emulator(image_count=60, seed=34, image_kb_max=6, api_key="rf_first_key_4e1a9c",
                              faults=FaultConfig(deleted_after_listing=1))
    second = roboflow_emulator(image_count=50, seed=35, image_kb_max=6, api_key="rf_second_key_7b20d3",
                               workspace="other-ws", project="other-project")
    started = {"first": asyncio.Event(), "second": asyncio.Event()}

    def gate(name: str, other: str):
        async def on_progress(processed, total, message):
            # Each waits for the other's first report: imports run one at a time would time out here.
            started[name].set()
            await asyncio.wait_for(started[other].wait(), 120)
        return on_progress

    async def main():
        return await asyncio.gather(
            streaming_import_from_roboflow(**platform_call(first, target, progress_callback=gate("first", "second"),
                                                           output_dir=str(tmp_path / "first"))),
            streaming_import_from_roboflow(**platform_call(second, target, dataset=OTHER_DATASET,
                                                           progress_callback=gate("second", "first"),
                                                           output_dir=str(tmp_path / "second"))))

    one, two = asyncio.run(main())
    assert (one.images_imported, one.images_failed, two.images_imported, two.success) == (59, 1, 50, True)
    assert len(one.errors) == 1 and ": fetch_details: not_found: " in one.errors[0]
    assert "progress callback failed" not in caplog.text  # neither gate timed out
    assert "ROBOFLOW_API_KEY" not in os.environ

    out, err = capfd.readouterr()
    for result, run, dataset in ((one, "first", DATASET), (two, "second", OTHER_DATASET)):
        rows = target.sql(f"""select coalesce(json_agg(to_jsonb(i) || to_jsonb(d)), '[]') as rows from od_images i
                              join od_dataset_images d on d.image_id = i.id where d.dataset_id = '{dataset}'""")
        files = b"".join(path.read_bytes() for path in (tmp_path / run).rglob("*") if path.is_file())
        outputs = [repr(result.to_dict()).encode(), json.dumps(rows).encode(), files]
        for secret in (first.config.api_key, second.config.api_key, target.service_role_key):
            assert all(secret.encode() not in output for output in outputs), (run, secret[:6])
    for text in (out, err, caplog.text):
        assert first.config.api_key not in text and second.config.api_key not in text


def test_plan_form_with_progress_objects(roboflow_emulator, target, no_keys_in_env, capfd):
    """(5) The design plan's form: request in the call, ``Progress`` objects, our richer result fields."""
    emu = roboflow_emulator(image_count=40, seed=21, image_kb_max=6, faults=FaultConfig(deleted_after_listing=2))
    calls = []
    importer_api = RoboflowStreamingImporter(**stand_ins(emu, target))

    async def main():
        result = await importer_api.import_dataset(emu.config.api_key, emu.config.workspace, emu.config.project, 2,
                                                   DATASET, platform_mapping(emu), concurrency=8,
                                                   progress_callback=lambda p: calls.append(
                                                       (p, threading.get_ident())))
        return threading.get_ident(), result

    loop_thread, result = asyncio.run(main())
    assert isinstance(result, ImportResult)
    deleted = set(emu.fault_targets()["deleted_after_listing"])
    assert result.counts == {"listed": 40, "imported": 38, "new": 38, "changed": 0, "unchanged": 0, "failed": 2}
    assert not result.complete and not result.success and result.output_dir is None
    assert (result.images_imported, result.images_failed, len(result.errors)) == (38, 2, 2)
    assert {(e["image_id"], e["step"], e["error_type"]) for e in result.dead_letters} == {
        (i, "fetch_details", "not_found") for i in deleted}
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 38
    assert len(target.list_objects(BUCKET)) == 38
    assert {thread for _, thread in calls} == {loop_thread}
    progress = [p for p, _ in calls]
    assert_progress_steps([p.done for p in progress], 40)
    assert progress[-1].final and progress[-1].failed == 2

    out, err = capfd.readouterr()
    assert out == ""
    for text in (out, err, repr(result.to_dict()), repr(importer_api)):
        assert emu.config.api_key not in text and target.service_role_key not in text


def test_auto_mapping_creates_classes_with_roboflow_colours(roboflow_emulator, target, no_keys_in_env, tmp_path):
    emu = roboflow_emulator(image_count=8, seed=2, image_kb_max=6)
    result = asyncio.run(RoboflowStreamingImporter(
        emu.config.api_key, emu.config.workspace, emu.config.project, DATASET, "auto", "job-42",
        **stand_ins(emu, target), output_dir=str(tmp_path / "out")).import_dataset())
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
    calls = []
    with pytest.raises(ImportInputError) as info:
        asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target, class_mapping=mapping,
                                                                   progress_callback=calls.append)))
    message = info.value.message
    assert message.startswith("Roboflow classes with no class mapping entry: ") and "\n" not in message
    assert repr(emu.dataset.classes[0]) in message and calls == []
    assert target.sql("select count(*) as n from od_classes where dataset_id is not null")[0]["n"] == 0
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 0 and target.list_objects(BUCKET) == []
    assert "ROBOFLOW_API_KEY" not in os.environ


@pytest.mark.parametrize("args,match", [
    (("", "ws", "p", None, DATASET, "auto"), "api_key is empty"),
    (("k" * 20, "ws", "p", "3", DATASET, "auto"), "version must be an integer"),
    (("k" * 20, "ws", "", None, DATASET, "auto"), "project is empty"),
    (("k" * 20, "ws", "p", None, DATASET, {"helmet": "x"}), "class mapping in the request must be a JSON list"),
    (("k" * 20, "ws", "p", None, DATASET, [{"source_name": "a"}]), "must set exactly one of"),
])
def test_malformed_call_is_refused_before_any_request(args, match, no_keys_in_env):
    api = RoboflowStreamingImporter(supabase_url="http://127.0.0.1:9", supabase_key="service-key-not-used",
                                    roboflow_api_url="http://127.0.0.1:9")
    with pytest.raises(ImportInputError, match=match):
        asyncio.run(api.import_dataset(*args))


def test_request_in_both_the_constructor_and_the_call_is_refused(no_keys_in_env):
    api = RoboflowStreamingImporter("k" * 20, "ws", "p", DATASET, "auto", supabase_url="http://127.0.0.1:9",
                                    supabase_key="service-key-not-used")
    with pytest.raises(ImportInputError, match=r"^the request was given to RoboflowStreamingImporter\(\.\.\.\)"):
        asyncio.run(api.import_dataset("k" * 20, "ws", "p", None, DATASET, "auto"))


@pytest.mark.parametrize("flag", ["--plan", "--plan_json"])
def test_plan_flags_in_pipeline_args_are_refused_not_run_as_an_import(roboflow_emulator, target, no_keys_in_env,
                                                                     flag):
    emu = roboflow_emulator(image_count=5)
    with pytest.raises(ImportInputError, match="^--plan only prints a plan, from the command line"):
        asyncio.run(streaming_import_from_roboflow(**platform_call(emu, target, pipeline_args=[flag])))
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 0 and target.list_objects(BUCKET) == []
    assert emu.counters().get("image_details", 0) == 0


def test_missing_supabase_settings_name_the_environment(no_keys_in_env):
    with pytest.raises(ImportInputError, match="no Supabase URL; pass supabase_url= or set SUPABASE_URL"):
        asyncio.run(RoboflowStreamingImporter().import_dataset("k" * 20, "ws", "p", None, DATASET, "auto"))


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
