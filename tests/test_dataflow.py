"""What can be proved about a Dataflow run without Google Cloud (issue 6).

(a) the command ``run_dataflow.sh --dry-run`` prints builds the job graph for the ``DataflowRunner``
    (``--dry_run=True``: translated and validated, not submitted), with the keys read through Secret
    Manager names and each SDK process's share of the rate limit;
(b) the import under FnApiRunner ``multi_processing`` (every DoFn pickled into other processes, as on
    Dataflow) writes the same rows and objects as the default local run;
(c) dead letters, ``--retry_dead_letters`` and the summary work on ``gs://`` paths through Beam's own
    ``GCSFileSystem`` (storage calls served from a local directory, ``tests/gcs_standin.py``);
and the launcher script's own contract: ``--help``, one-line errors, no key in what it prints.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.runner import PipelineState
from apache_beam.utils import secret as beam_secret

from pipeline import main as importer
from pipeline import preflight, validation
from pipeline.errors import InputError
from pipeline.testing.roboflow_emulator import FaultConfig
from tests import gcs_standin
from tests.importer import importer_args
from tests.test_secrets import assert_no_secret
from transforms.batch_step import NAMESPACE, BatchStepFn, counted
from transforms.core.ratelimit import JOB_START
from transforms.core.records import ImportContext
from transforms.core.secrets import SecretRef
from transforms.core.tally import count

REPO = Path(__file__).resolve().parents[1]
DATASET = "dfdfdfdf-0000-4000-8000-000000000006"
RF_SECRET = "projects/offline-proj/secrets/roboflow-key/versions/latest"
SB_SECRET = "projects/offline-proj/secrets/supabase-service-key/versions/3"
LAUNCHER = {"--project": "offline-proj", "--region": "europe-west1", "--temp_location": "gs://offline-bucket/tmp",
            "--staging_location": "gs://offline-bucket/staging", "--max_workers": "5",
            "--machine_type": "n1-standard-4", "--service_account": "importer@offline-proj.iam.gserviceaccount.com",
            "--network": "import-net", "--subnetwork": "regions/europe-west1/subnetworks/import-subnet",
            "--job_name": "roboflow-import-offline"}
EXPECTED_STEPS = {"Project", "ListImages", "BatchImages", "FetchDetails", "UploadImages", "WriteRows",
                  "CollectDeadLetters", "WriteDeadLetters"}


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'dataflow')")
    return clean_supabase


def launcher(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "run_dataflow.sh"), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})}, cwd="/")


class FakeSecretManager:
    """Beam's ``GcpSecret`` answering from a dict, so preflight and workers read keys by version name."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.read: list[str] = []
        outer = self

        class GcpSecret:
            def __init__(self, version_name: str):
                self.version_name = version_name

            def get_secret_bytes(self) -> bytes:
                outer.read.append(self.version_name)
                return outer.values[self.version_name].encode()

        self.cls = GcpSecret


# ---- the launcher script ------------------------------------------------------------------------

def test_help_documents_every_launcher_parameter():
    result = launcher("--help")
    assert result.returncode == 0
    for flag in [*LAUNCHER, "--dry-run", "--roboflow_api_key_secret", "--supabase_key_secret",
                 "--roboflow_rate_limit", "--dead_letter_path", "--roboflow_workspace", "--dataset_id"]:
        assert flag in result.stdout, flag


@pytest.mark.parametrize("missing, fix", [
    ("--project", "--project my-gcp-project"), ("--region", "--region europe-west1"),
    ("--temp_location", "--temp_location gs://"), ("--roboflow_api_key_secret", "Secret Manager"),
    ("--supabase_key_secret", "Secret Manager"),
])
def test_a_missing_required_parameter_is_one_line_and_exit_2(missing, fix):
    args = {**LAUNCHER, "--roboflow_api_key_secret": RF_SECRET, "--supabase_key_secret": SB_SECRET}
    del args[missing]
    result = launcher(*[x for pair in args.items() for x in pair], "--dry-run")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and fix in lines[0], result.stderr


def test_a_key_passed_as_an_argument_is_refused_without_printing_it():
    key = "rf_live_do_not_print_0123456789"
    args = [x for pair in LAUNCHER.items() for x in pair]
    as_value = launcher(*args, "--roboflow_api_key_secret", key, "--supabase_key_secret", SB_SECRET,
                        "--dry-run", env={"ROBOFLOW_API_KEY": key})
    as_option = launcher(*args, f"--roboflow_api_key={key}", "--dry-run")
    for result in (as_value, as_option):
        assert result.returncode == 2 and key not in result.stdout + result.stderr
    assert "never options" in as_option.stderr and "--roboflow_api_key" in as_option.stderr


# ---- (a) the Dataflow job graph, offline -----------------------------------------------------------

def test_dry_run_command_builds_the_dataflow_job_graph(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=20, seed=61)
    keys = {"ROBOFLOW_API_KEY": emu.config.api_key, "SUPABASE_SERVICE_ROLE_KEY": target.service_role_key}
    importer_options = importer_args(emu, target, tmp_path, DATASET)
    importer_options = importer_options[:importer_options.index("--dead_letter_path")] + [
        "--class_mapping", "auto", "--roboflow_rate_limit", "100",
        "--roboflow_api_key_secret", RF_SECRET, "--supabase_key_secret", SB_SECRET]
    result = launcher(*[x for pair in LAUNCHER.items() for x in pair], *importer_options, "--dry-run", env=keys)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert_no_secret(printed.encode(), *keys.values())
    command = shlex.split(printed)
    assert command[1:4] == ["-m", "pipeline.main", "--runner=DataflowRunner"]
    flags = command[3:]
    expected = ["--project=offline-proj", "--region=europe-west1", "--temp_location=gs://offline-bucket/tmp",
                "--staging_location=gs://offline-bucket/staging", "--max_num_workers=5",
                "--machine_type=n1-standard-4", "--service_account_email=importer@offline-proj.iam.gserviceaccount.com",
                "--network=import-net", "--subnetwork=regions/europe-west1/subnetworks/import-subnet",
                "--job_name=roboflow-import-offline", f"--setup_file={REPO}/setup.py",
                "--dead_letter_path=gs://offline-bucket/tmp/roboflow-import/roboflow-import-offline/dead_letters"]
    assert set(expected) <= set(flags)
    assert all(option in flags for option in importer_options)

    # What pipeline.main does with that command, up to submitting: keys only from Secret Manager.
    for name in keys:
        monkeypatch.delenv(name, raising=False)
    secrets = FakeSecretManager({RF_SECRET: emu.config.api_key, SB_SECRET: target.service_role_key})
    monkeypatch.setattr(beam_secret, "GcpSecret", secrets.cls)
    options = validation.parse_command_line(flags + ["--dry_run=True"])
    runner, processes = importer.runner_settings(options)
    assert (runner, processes) == ("dataflowrunner", 5 * 4)  # 5 workers x one SDK process per vCPU
    opts = options.importer
    checked = preflight.check(opts, workers=processes)
    assert sorted(secrets.read) == sorted([RF_SECRET, SB_SECRET])
    assert checked.roboflow.rate_limit == pytest.approx(100 / 20)
    assert checked.roboflow.start_rate == JOB_START  # where each of 20 would start without --roboflow_rate_limit
    assert checked.roboflow.api_key == SecretRef(secret_version=RF_SECRET)
    assert checked.supabase.service_key == SecretRef(secret_version=SB_SECRET)

    context = ImportContext(DATASET, checked.workspace, checked.project, None, checked.supabase.bucket, {}, None)
    p = beam.Pipeline(options=options.pipeline)
    importer.build_pipeline(p, checked, context, opts, shards=4 * processes)
    run = p.run()
    assert run.state == PipelineState.DONE
    proto = p.runner.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert EXPECTED_STEPS <= names
    urns = {t.spec.urn for t in proto.components.transforms.values()}
    shards = [t for t in proto.components.transforms.values() if t.unique_name == "BatchImages/GroupByShard"]
    assert [t.spec.urn for t in shards] == ["beam:transform:group_by_key:v1"]  # a shuffle Dataflow runs itself
    assert "beam:transform:group_into_batches:v1" not in urns
    images = [env.payload for env in proto.components.environments.values()]
    assert any(b"beam_python3.11_sdk:2.77.0" in payload for payload in images)
    staged = [dep.role_payload for env in proto.components.environments.values() for dep in env.dependencies]
    assert any(b"workflow.tar.gz" in name for name in staged)  # the sdist of setup.py, for the workers
    # The Dataflow Environment as the service (and its console) would get it, options included.
    job = str(apiclient.Environment([], options.pipeline, "8", "gs://offline-bucket/staging/pipeline.pb", proto).proto)
    for shown in ('machine_type: "n1-standard-4"', "max_num_workers: 5", 'network: "import-net"',
                  "importer@offline-proj.iam.gserviceaccount.com", RF_SECRET, SB_SECRET):
        assert shown in job, shown
    assert_no_secret(proto.SerializeToString() + job.encode(), *keys.values())


@pytest.mark.parametrize("flags, error", [
    ([], "--roboflow_api_key_secret is required on Dataflow"),
    (["--roboflow_api_key_secret", RF_SECRET], "--supabase_key_secret is required on Dataflow"),
    (["--roboflow_api_key_secret", RF_SECRET, "--supabase_key_secret", SB_SECRET,
      "--dead_letter_path", "import-output/dead"], "Dataflow workers cannot write there"),
    (["--roboflow_api_key_secret", RF_SECRET, "--supabase_key_secret", SB_SECRET,
      "--dead_letter_path", "gs://b/dead", "--machine_type", "n1-standard-4"], "--max_num_workers is required"),
    (["--roboflow_api_key_secret", RF_SECRET, "--supabase_key_secret", SB_SECRET,
      "--dead_letter_path", "gs://b/dead", "--max_num_workers", "3"], "--machine_type is required"),
])
def test_a_dataflow_run_without_secrets_cap_or_remote_dead_letters_is_refused_before_preflight(
        flags, error, monkeypatch, capsys):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_would_not_reach_workers_123")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_would_not_reach_workers_123")
    code = importer.run(["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t",
                         "--roboflow_workspace", "ws", "--roboflow_project", "p", "--dataset_id", DATASET,
                         "--supabase_url", "http://127.0.0.1:9", *flags])
    err = capsys.readouterr().err
    assert code == importer.EXIT_INPUT and error in err and len(err.strip().splitlines()) == 1


# ---- (b) multi_processing: DoFns pickled into other processes ----------------------------------------

def snapshot(stack) -> dict:
    """Rows and objects of the dataset without generated ids and timestamps: what two runs must agree on."""
    drop = "array['id','created_at','updated_at','added_at','image_id','class_id','dataset_id','import_run_id']"
    return {
        "images": stack.sql(f"select to_jsonb(i) - {drop} as row from od_images i order by i.source_ref"),
        "members": stack.sql(f"select i.source_ref, to_jsonb(d) - {drop} as row from od_dataset_images d "
                             "join od_images i on i.id = d.image_id order by i.source_ref"),
        "annotations": stack.sql(f"select i.source_ref, c.name, to_jsonb(a) - {drop} as row from od_annotations a "
                                 "join od_images i on i.id = a.image_id join od_classes c on c.id = a.class_id "
                                 "order by a.source_key"),
        "classes": stack.sql("select name from od_classes where dataset_id is not null order by name"),
        "objects": sorted((o["name"], o["size"], o["etag"]) for o in stack.list_objects("od-images")),
    }


def first_difference(got: list, expected: list):
    for a, b in zip(got, expected, strict=False):
        if a != b:
            if isinstance(a, dict) and isinstance(a.get("row"), dict):
                return {k: (a["row"].get(k), b["row"].get(k)) for k in a["row"] if a["row"].get(k) != b["row"].get(k)}
            return a, b
    return f"{len(got)} rows, expected {len(expected)}"


def test_multi_processing_run_writes_what_the_default_run_writes(roboflow_emulator, target, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=60, seed=62, project_type="instance-segmentation",
                            faults=FaultConfig(deleted_after_listing=2))
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)

    def run(out: Path, *extra: str) -> dict:
        code = importer.run(importer_args(emu, target, out, DATASET, *extra))
        assert code == importer.EXIT_INCOMPLETE  # the two deleted images, in both runs
        return json.loads((out / "summary.json").read_text())

    default = run(tmp_path / "default")
    expected = snapshot(target)
    # Empty the images, keep the dataset's classes: their ids are part of each image's import hash.
    target.execute_sql("delete from od_annotations; delete from od_dataset_images; delete from od_images")
    target.storage.empty_bucket("od-images")
    assert snapshot(target)["objects"] == []
    pickled = run(tmp_path / "multi", "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                  "--direct_num_workers=2")
    assert len(expected["images"]) == 58 and expected["annotations"] and len(expected["objects"]) == 58
    got = snapshot(target)
    for table, rows in expected.items():
        assert got[table] == rows, (table, first_difference(got[table], rows))
    for key in ("listed", "imported", "new", "failed", "annotations", "objects_uploaded", "dead_letters"):
        assert pickled[key] == default[key], key


# ---- (c) gs:// paths through Beam's GCSFileSystem ----------------------------------------------------

def test_dead_letters_retry_and_summary_on_gs_paths(roboflow_emulator, target, tmp_path, monkeypatch):
    store = gcs_standin.install(monkeypatch, tmp_path / "gcs")
    emu = roboflow_emulator(image_count=30, seed=63, faults=FaultConfig(deleted_after_listing=2))
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    dead, summary_path = "gs://import-bucket/runs/one/dead_letters", "gs://import-bucket/runs/one/summary.json"

    def run(*extra: str) -> tuple[int, dict]:
        argv = importer_args(emu, target, tmp_path, DATASET, *extra)
        argv[argv.index("--dead_letter_path") + 1] = dead
        argv[argv.index("--summary_path") + 1] = summary_path
        code = importer.run(argv)
        return code, json.loads(store.read(summary_path))

    stale = store.local(f"{dead}/dead_letters-00000-of-00002.jsonl")  # an earlier run's file, to be replaced
    stale.parent.mkdir(parents=True)
    stale.write_text('{"image_id": "stale"}\n')

    code, summary = run()
    assert code == importer.EXIT_INCOMPLETE and summary["failed"] == 2
    objects = sorted(path for path, _size in store.list_files(dead + "/"))  # the stale file and temp files gone
    assert objects == [f"{dead}/dead_letters-00000-of-00001.jsonl"]
    assert summary["dead_letter_files"] == [f"{dead}/dead_letters-00000-of-00001.jsonl"]
    letters = [json.loads(line) for line in store.read(summary["dead_letter_files"][0]).decode().splitlines()]
    assert {letter["image_id"] for letter in letters} == set(emu.fault_targets()["deleted_after_listing"])
    assert "open:wb" in store.calls and "copy" in store.calls and "delete" in store.calls

    # --retry_dead_letters reads them back from gs:// and tries exactly those two images again.
    code, retried = run("--retry_dead_letters", dead)
    assert code == importer.EXIT_INCOMPLETE and (retried["listed"], retried["failed"]) == (2, 2)


# ---- throttling reaches Dataflow's autoscaler signal -------------------------------------------------

def test_throttled_waits_add_up_in_beams_throttling_counter():
    """Dataflow reads ``cumulativeThrottlingSeconds`` (whole seconds); 25 waits of 0.2 s are 5 s, not 0."""

    class Step(BatchStepFn):
        step = "probe"

        def process(self, n):
            for _ in range(n):
                with counted(self._throttling):  # as a client counts a 0.2 s wait in one call
                    count("roboflow.throttled_seconds", 0.2)
            yield n

    options = PipelineOptions(["--runner=FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        p | beam.Create([25]) | beam.ParDo(Step(concurrency=1))
    counters = {c.key.metric.name: c.committed
                for c in p.result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters["cumulativeThrottlingSeconds"] == 5
    assert counters["throttled_ms"] == 25 * 200



def test_retry_after_waits_reach_the_throttling_counter(roboflow_emulator, target, tmp_path, monkeypatch):
    """A 429's back-off (here Retry-After: 2) is time throttled too, not only waits in the token bucket."""
    emu = roboflow_emulator(image_count=10, seed=64, faults=FaultConfig(
        throttle_count=3, throttle_routes=("image_details",), retry_after_fraction=1.0, retry_after_seconds=2))
    seen: list[dict] = []

    def spy(result):
        counters = importer_counters_of(result)
        seen.append(counters)
        return counters

    importer_counters_of = importer.counters_of
    monkeypatch.setattr(importer, "counters_of", spy)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", target.service_role_key)
    assert importer.run(importer_args(emu, target, tmp_path, DATASET)) == importer.EXIT_OK
    counters = seen[0]
    assert counters["retry.roboflow.rate_limited"] == 3
    assert counters["cumulativeThrottlingSeconds"] >= 3 * 2 and counters["throttled_ms"] >= 3 * 2000


def test_an_unreadable_secret_is_one_line_naming_the_role_to_grant(monkeypatch, capsys):
    class DeniedSecret:
        def __init__(self, version_name: str):
            self.version_name = version_name

        def get_secret_bytes(self) -> bytes:  # what Beam's GcpSecret raises for any failure
            raise RuntimeError(f"Failed to retrieve secret bytes for secret {self.version_name} with exception "
                               "403 Permission 'secretmanager.versions.access' denied")

    monkeypatch.setattr(beam_secret, "GcpSecret", DeniedSecret)
    code = importer.run(["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t",
                         "--max_num_workers=2", "--machine_type=n1-standard-2", "--dead_letter_path=gs://b/dead",
                         "--roboflow_api_key_secret", RF_SECRET, "--supabase_key_secret", SB_SECRET,
                         "--roboflow_workspace", "ws", "--roboflow_project", "p", "--dataset_id", DATASET,
                         "--supabase_url", "http://127.0.0.1:9", "--class_mapping", "auto"])
    err = capsys.readouterr().err.strip()
    assert code == importer.EXIT_INPUT and len(err.splitlines()) == 1
    assert RF_SECRET in err and "Permission" in err and "roles/secretmanager.secretAccessor" in err


def test_workers_resolve_keys_from_secret_manager_names_in_setup(roboflow_emulator, target, tmp_path, monkeypatch):
    """No key in the environment: the launcher's preflight and every DoFn's setup() read the secrets by name."""
    emu = roboflow_emulator(image_count=12, seed=65)
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
    secrets = FakeSecretManager({RF_SECRET: emu.config.api_key, SB_SECRET: target.service_role_key})
    monkeypatch.setattr(beam_secret, "GcpSecret", secrets.cls)
    code = importer.run(importer_args(emu, target, tmp_path, DATASET, "--roboflow_api_key_secret", RF_SECRET,
                                      "--supabase_key_secret", SB_SECRET))
    assert code == importer.EXIT_OK
    assert target.sql("select count(*) as n from od_images")[0]["n"] == 12
    # preflight reads each once; the workers' clients read them again (one client per process and config)
    assert secrets.read.count(RF_SECRET) >= 2 and secrets.read.count(SB_SECRET) >= 2


def test_dataflows_kms_key_option_is_not_mistaken_for_an_api_key():
    kms = "--dataflow_kms_key=projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"
    result = launcher(*[x for pair in LAUNCHER.items() for x in pair], "--roboflow_api_key_secret", RF_SECRET,
                      "--supabase_key_secret", SB_SECRET, kms, "--dry-run")
    assert result.returncode == 0 and kms in result.stdout
    validation.check_command_line([kms])
    with pytest.raises(InputError, match="keys are never options"):
        validation.check_command_line(["--roboflow_api_key=abc"])
