"""Bad input, as a user meets it: exit code 2, one ``error:`` line on stderr naming the problem and
the fix, no secret in the output, and nothing written (rows, objects, summary, dead letters).

The importer runs as a subprocess (``python -m pipeline.main``) so stderr and the exit code are
exactly what a person sees. One emulator serves the whole module; the session Supabase stack is
reset before each case, and a case that breaks the schema undoes its change before the next one.
Cases caught before any network call run side by side, with both URLs on closed ports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.testing.roboflow_emulator import EmulatorConfig, RoboflowEmulator
from pipeline.testing.supabase_stack import LocalSupabase, mint_key
from pipeline.testing.supabase_stack.keys import new_jwt_secret

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "22222222-3333-4444-8555-666666666666"
ABSENT_DATASET = "99999999-8888-4777-8666-555555555555"
ABSENT_CLASS = "0badc1a5-0000-4000-8000-000000000001"
OTHER_DATASET = "33333333-4444-4555-8666-777777777777"
OTHER_CLASS = "0badc1a5-0000-4000-8000-000000000002"
BUCKET = "od-images"
WRONG_RF_KEY = "rf_wrong_key_Zq81xT"
GARBAGE_SB_KEY = "not_a_supabase_key_9fQ2"
PUBLISHABLE_KEY = "sb_publishable_Hq3kLm9Zx2"
FOREIGN_SB_KEY = mint_key(new_jwt_secret(), "service_role")  # the right role, signed by another project
# Logged by `import apache_beam` itself, before the importer runs; see test_stderr_holds_nothing_but_the_error.
BEAM_IMPORT_NOISE = "WARNING:root:apitools not found"


@dataclasses.dataclass
class World:
    """What a case points at: the emulator, the stack and a scratch directory."""

    emu: RoboflowEmulator
    stack: LocalSupabase
    tmp: Path
    offline: bool = False  # both services on closed ports: a check behind a network call shows as such

    def fill(self, value: str) -> str:
        api, supabase = (closed_port_url(), closed_port_url()) if self.offline else (self.emu.api_url, self.stack.url)
        return value.format(api=api, cdn=self.emu.cdn_url, supabase=supabase, tmp=self.tmp,
                            closed=closed_port_url(), anon=self.stack.anon_key)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: what the user gets wrong, and what the one stderr line must say."""

    expect: tuple[str, ...]  # substrings of the error line: the problem and its fix
    args: dict[str, str | bool | None] = dataclasses.field(default_factory=dict)  # None drops a flag
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)  # None unsets a variable
    extra: tuple[str, ...] = ()  # appended to the command line as they are
    setup: Callable[[World], None] | None = None
    restore: Callable[[World], None] | None = None  # undoes a setup the stack's reset() would not


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sql(text: str) -> Callable[[World], None]:
    """A schema change or its exact undo: renames keep constraints, grants and data as they were."""
    return lambda world: world.stack.execute_sql(text)


def delete_bucket(world: World) -> None:
    world.stack.storage.delete_bucket(BUCKET)


def write_file(name: str, content: Callable[[World], str]) -> Callable[[World], None]:
    return lambda world: (world.tmp / name).write_text(content(world), encoding="utf-8")


def all_classes_to(target: str) -> Callable[[World], str]:
    return lambda world: json.dumps([{"source_name": c, "target_class_id": target} for c in world.emu.dataset.classes])


def first_class_only(world: World) -> str:
    return json.dumps([{"source_name": world.emu.dataset.classes[0], "create_new": True}])


def class_of_another_dataset(world: World) -> None:
    """A class owned by another dataset, and a mapping onto it (reset() removes both datasets' rows)."""
    world.stack.execute_sql(
        f"insert into od_datasets (id, name) values ('{OTHER_DATASET}', 'other');"
        f"insert into od_classes (id, name, dataset_id) values ('{OTHER_CLASS}', 'theirs', '{OTHER_DATASET}');")
    write_file("other.json", all_classes_to(OTHER_CLASS))(world)


CASES = {
    # command line and run settings
    "misspelled_flag": Case(("unknown option --batch-size", "did you mean --batch_size?"),
                            args={"--batch-size": "10"}),
    "key_as_option": Case(("unknown option --roboflow_api_key", "keys are never options", "ROBOFLOW_API_KEY"),
                          args={"--roboflow_api_key": WRONG_RF_KEY}),
    "stray_value": Case(("unexpected value after --summary_path", "one value"), extra=(WRONG_RF_KEY,)),
    "not_an_integer": Case(("argument --batch_size: invalid int value: 'ten'", "--help"), args={"--batch_size": "ten"}),
    "direct_runner": Case(("--runner=DirectRunner cannot run this pipeline", "--runner=FnApiRunner"),
                          args={"--runner": "DirectRunner"}),
    "batch_size_zero": Case(("--batch_size must be a positive integer (got 0)", "default 50"),
                            args={"--batch_size": "0"}),
    "concurrency_negative": Case(("--concurrency must be a positive integer (got -3)", "size it from the latency"),
                                 args={"--concurrency": "-3"}),
    "rate_limit_negative": Case(("--roboflow_rate_limit must be a positive number", "omit it"),
                                args={"--roboflow_rate_limit": "-5"}),
    "stall_timeout_zero": Case(("--roboflow_stall_timeout must be a positive number of seconds (got 0.0)",
                                "default 600"), args={"--roboflow_stall_timeout": "0"}),
    "summary_path_is_a_directory": Case(("--summary_path", "is a directory", "summary.json"),
                                        args={"--summary_path": "{tmp}"}),
    "retry_without_dead_letters": Case(("no dead letters under", "--retry_dead_letters"),
                                       args={"--retry_dead_letters": "{tmp}/earlier"}),
    "dead_letter_path_is_a_file": Case(("--dead_letter_path", "is a file", "directory"),
                                       args={"--dead_letter_path": "{tmp}/dead"},
                                       setup=write_file("dead", lambda world: "a file, not a directory")),
    # Roboflow
    "wrong_roboflow_key": Case(("Roboflow rejected the API key in ROBOFLOW_API_KEY (401)", "private API key"),
                               env={"ROBOFLOW_API_KEY": WRONG_RF_KEY}),
    "missing_roboflow_key": Case(("ROBOFLOW_API_KEY is not set", "export ROBOFLOW_API_KEY="),
                                 env={"ROBOFLOW_API_KEY": None}),
    "malformed_key_secret": Case(("--roboflow_api_key_secret", "projects/PROJECT/secrets/NAME/versions/VERSION"),
                                 args={"--roboflow_api_key_secret": "roboflow-key"}),
    "unknown_workspace": Case(("workspace 'no-such-ws' not found", "check --roboflow_workspace"),
                              args={"--roboflow_workspace": "no-such-ws"}),
    "unknown_project": Case(("no-such-project not found", "check --roboflow_project", "demo-project"),
                            args={"--roboflow_project": "no-such-project"}),
    "unknown_version": Case(("version 99", "not found", "available versions: 1, 2", "--roboflow_version"),
                            args={"--roboflow_version": "99"}),
    "version_zero": Case(("--roboflow_version must be a positive integer",), args={"--roboflow_version": "0"}),
    "api_url_malformed": Case(("--roboflow_api_url 'api.roboflow.com' is not an http(s) URL",
                               "https://api.roboflow.com"), args={"--roboflow_api_url": "api.roboflow.com"}),
    "api_url_with_key": Case(("--roboflow_api_url must not carry a query", "ROBOFLOW_API_KEY"),
                             args={"--roboflow_api_url": "{api}/?api_key=" + WRONG_RF_KEY}),
    "roboflow_unreachable": Case(("cannot reach the Roboflow API", "connection refused", "--roboflow_api_url"),
                                 args={"--roboflow_api_url": "{closed}"}),
    # target dataset and class mapping
    "dataset_id_missing": Case(("--dataset_id is required", "od_datasets.id"), args={"--dataset_id": None}),
    "dataset_id_not_uuid": Case(("--dataset_id 'my-dataset' is not a UUID", "od_datasets.id"),
                                args={"--dataset_id": "my-dataset"}),
    "dataset_not_in_od_datasets": Case((f"dataset {ABSENT_DATASET} is not in od_datasets", "--dataset_id"),
                                       args={"--dataset_id": ABSENT_DATASET}),
    "mapping_not_given": Case(("no --class_mapping given", "--class_mapping auto"), args={"--class_mapping": None}),
    "mapping_file_missing": Case(("nope.json not found", "--class_mapping"),
                                 args={"--class_mapping": "{tmp}/nope.json"}),
    "mapping_not_json": Case(("bad.json is not valid JSON", "fix the file"),
                             args={"--class_mapping": "{tmp}/bad.json"},
                             setup=write_file("bad.json", lambda world: "[{source_name: 'helmet'}")),
    "mapping_wrong_shape": Case(("must be a JSON list of", "source_name"),
                                args={"--class_mapping": "{tmp}/shape.json"},
                                setup=write_file("shape.json", lambda world: json.dumps({"helmet": "person"}))),
    "mapping_unknown_target_class": Case((f"target_class_id {ABSENT_CLASS}", "not in od_classes", "create_new"),
                                         args={"--class_mapping": "{tmp}/target.json"},
                                         setup=write_file("target.json", all_classes_to(ABSENT_CLASS))),
    "mapping_target_of_another_dataset": Case((f"target_class_id {OTHER_CLASS}", "another dataset", "create_new"),
                                              args={"--class_mapping": "{tmp}/other.json"},
                                              setup=class_of_another_dataset),
    "mapping_class_without_entry": Case(("no class mapping entry", "--class_mapping auto"),
                                        args={"--class_mapping": "{tmp}/partial.json"},
                                        setup=write_file("partial.json", first_class_only)),
    # Supabase
    "supabase_url_missing": Case(("no Supabase URL", "--supabase_url", "SUPABASE_URL"), args={"--supabase_url": None}),
    "supabase_url_malformed": Case(("--supabase_url 'xyz.supabase.co' is not an http(s) URL", "https://"),
                                   args={"--supabase_url": "xyz.supabase.co"}),
    "supabase_unreachable": Case(("cannot reach Supabase", "connection refused", "--supabase_url"),
                                 args={"--supabase_url": "{closed}"}),
    "supabase_url_not_supabase": Case(("does not answer like a Supabase project", "--supabase_url"),
                                      args={"--supabase_url": "{cdn}"}),
    "missing_service_key": Case(("SUPABASE_SERVICE_ROLE_KEY is not set", "export SUPABASE_SERVICE_ROLE_KEY="),
                                env={"SUPABASE_SERVICE_ROLE_KEY": None}),
    "service_key_of_another_project": Case(("rejected the key in SUPABASE_SERVICE_ROLE_KEY", "service_role key"),
                                           env={"SUPABASE_SERVICE_ROLE_KEY": FOREIGN_SB_KEY}),
    "service_key_garbage": Case(("rejected the key in SUPABASE_SERVICE_ROLE_KEY", "service_role key"),
                                env={"SUPABASE_SERVICE_ROLE_KEY": GARBAGE_SB_KEY}),
    "anon_key_instead_of_service_key": Case(("SUPABASE_SERVICE_ROLE_KEY holds an 'anon' key", "service_role"),
                                            env={"SUPABASE_SERVICE_ROLE_KEY": "{anon}"}),
    "publishable_key_instead_of_secret": Case(("holds a publishable key", "service_role"),
                                              env={"SUPABASE_SERVICE_ROLE_KEY": PUBLISHABLE_KEY}),
    "bucket_missing": Case((f"storage bucket '{BUCKET}' does not exist", "--create_bucket"), setup=delete_bucket),
    "schema_without_import_columns": Case(
        ("not migrated", "source_ref", "0002_idempotent_import.sql"),
        setup=sql("alter table od_images rename column source_ref to source_ref_gone;"),
        restore=sql("alter table od_images rename column source_ref_gone to source_ref;")),
    "schema_without_tracking": Case(
        ("not migrated", "0004_import_tracking.sql"),
        setup=sql("alter function od_import_schema_version() rename to od_import_schema_version_gone;"),
        restore=sql("alter function od_import_schema_version_gone() rename to od_import_schema_version;")),
    "schema_without_tables": Case(
        ("no od_images table", "0001_platform_schema.sql"),
        setup=sql("alter table od_images rename to od_images_gone;"),
        restore=sql("alter table od_images_gone rename to od_images;")),
}


# Caught before any network call, so run side by side against closed ports (see offline_runs).
OFFLINE = (
    "misspelled_flag", "key_as_option", "stray_value", "not_an_integer", "direct_runner", "batch_size_zero",
    "concurrency_negative", "rate_limit_negative", "summary_path_is_a_directory", "dead_letter_path_is_a_file",
    "retry_without_dead_letters", "missing_roboflow_key", "malformed_key_secret", "version_zero",
    "api_url_malformed", "api_url_with_key", "roboflow_unreachable", "dataset_id_missing", "dataset_id_not_uuid",
    "mapping_not_given", "mapping_file_missing", "mapping_not_json", "mapping_wrong_shape", "supabase_url_missing",
    "supabase_url_malformed", "missing_service_key", "anon_key_instead_of_service_key",
    "publishable_key_instead_of_secret",
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[RoboflowEmulator]:
    with RoboflowEmulator(EmulatorConfig(image_count=4, seed=21, versions=2)) as emu:
        yield emu


@pytest.fixture(scope="module")
def offline_runs(emulator, supabase_stack, tmp_path_factory) -> dict[str, tuple[World, subprocess.CompletedProcess]]:
    """The OFFLINE cases, two or more at a time: closed ports mean nothing can be written, and a
    check that moved behind a network call would print "cannot reach" instead of its own line."""
    def run(name: str) -> tuple[World, subprocess.CompletedProcess]:
        case = CASES[name]
        world = World(emulator, supabase_stack, tmp_path_factory.mktemp(name), offline=True)
        if case.setup:
            case.setup(world)
        return world, run_importer(world, case.args, case.env, case.extra)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(OFFLINE, pool.map(run, OFFLINE), strict=True))


@pytest.fixture
def world(emulator, clean_supabase, tmp_path) -> World:
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'bad-input')")
    return World(emulator, clean_supabase, tmp_path)


def run_importer(world: World, args: dict, env: dict, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    flags = {
        "--roboflow_workspace": world.emu.config.workspace, "--roboflow_project": world.emu.config.project,
        "--roboflow_api_url": "{api}", "--supabase_url": "{supabase}", "--dataset_id": DATASET,
        "--class_mapping": "auto", "--dead_letter_path": "{tmp}/dead", "--summary_path": "{tmp}/summary.json",
        **args,
    }
    argv = []
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, world.fill(value)]
    argv += extra
    variables = {**os.environ, "ROBOFLOW_API_KEY": world.emu.config.api_key,
                 "SUPABASE_SERVICE_ROLE_KEY": world.stack.service_role_key}
    variables.pop("SUPABASE_URL", None)
    for name, value in env.items():
        if value is None:
            variables.pop(name, None)
        else:
            variables[name] = world.fill(value)
    return subprocess.run([sys.executable, "-m", "pipeline.main", *argv], cwd=REPO_ROOT, env=variables,
                          capture_output=True, text=True, timeout=120)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(BEAM_IMPORT_NOISE)]


def assert_no_reports(world: World) -> None:
    assert not (world.tmp / "summary.json").exists()
    dead = world.tmp / "dead"
    assert not dead.is_dir() or not any(dead.iterdir())


def bucket_ids(world: World) -> list[str]:
    return sorted(b["id"] for b in world.stack.storage.list_buckets())


def assert_nothing_written(world: World, buckets_before: list[str]) -> None:
    counts = world.stack.sql(
        "select (select count(*) from od_images) as images, (select count(*) from od_annotations) as annotations, "
        "(select count(*) from od_dataset_images) as links, "
        f"(select count(*) from od_classes where dataset_id = '{DATASET}') as dataset_classes")[0]
    assert counts == {"images": 0, "annotations": 0, "links": 0, "dataset_classes": 0}
    assert bucket_ids(world) == buckets_before
    for bucket in world.stack.storage.list_buckets():
        assert world.stack.list_objects(bucket["id"]) == []
    assert_no_reports(world)


def secrets_of(world: World) -> tuple[str, ...]:
    return (WRONG_RF_KEY, GARBAGE_SB_KEY, PUBLISHABLE_KEY, FOREIGN_SB_KEY, world.emu.config.api_key,
            world.stack.service_role_key, world.stack.anon_key)


@pytest.mark.parametrize("name", [
    pytest.param(name, id=name)
    for name in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(name: str, request):
    case = CASES[name]
    if name in OFFLINE:
        world, done = request.getfixturevalue("offline_runs")[name]
        assert_no_reports(world)
    else:
        world = request.getfixturevalue("world")
        if case.setup:
            case.setup(world)
        buckets = bucket_ids(world)
        try:
            done = run_importer(world, case.args, case.env, case.extra)
        finally:
            if case.restore:
                case.restore(world)
        assert_nothing_written(world, buckets)
    lines = error_lines(done.stderr)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for part in case.expect:
        assert part in lines[0], (part, lines[0])
    assert done.stdout == ""
    for secret in secrets_of(world):
        assert secret not in done.stdout + done.stderr


def test_stderr_holds_nothing_but_the_error(world: World):
    done = run_importer(world, {"--batch_size": "0"}, {})
    assert done.returncode == 2
    assert done.stderr.splitlines() == error_lines(done.stderr)


def test_missing_bucket_is_created_with_create_bucket(world: World):
    """The fix the bucket error names works: the same run with --create_bucket creates it and imports."""
    delete_bucket(world)
    done = run_importer(world, {"--create_bucket": True}, {})
    assert done.returncode == 0, done.stderr
    bucket = world.stack.storage.get_bucket(BUCKET)
    assert bucket is not None and not bucket["public"]
    assert len(world.stack.list_objects(BUCKET)) == len(world.emu.dataset.image_ids)
    assert json.loads((world.tmp / "summary.json").read_text())["imported"] == len(world.emu.dataset.image_ids)
