"""No secret ever leaves the process (issue 4 §4): not in the job graph, options, output or reports."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.internal.cloudpickle import cloudpickle
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from pipeline import main as importer
from pipeline import preflight
from pipeline.options import ImportOptions
from pipeline.testing.roboflow_emulator import FaultConfig
from pipeline.testing.supabase_stack import StackFaults
from tests.importer import importer_args, start_import
from transforms.core.records import ImportContext

DATASET = "5ec7e75e-0000-4000-8000-000000000001"


@pytest.fixture
def stack(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'secrets')")
    yield clean_supabase
    clean_supabase.faults = StackFaults()


def every_byte_written(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def secret_forms(secret: str) -> list[bytes]:
    """The secret and the pieces of it that would still be a leak (a JWT's signature, a long key's halves)."""
    forms = [secret]
    if secret.count(".") == 2:
        forms += [part for part in secret.split(".")[1:] if len(part) >= 8]
    elif len(secret) >= 16:
        forms += [secret[: len(secret) // 2], secret[len(secret) // 2:]]
    return [f.encode() for f in forms]


def assert_no_secret(blob: bytes, *secrets: str) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in blob, f"secret leaked ({len(form)} bytes of it)"


def test_job_graph_options_and_display_data_carry_no_secret(roboflow_emulator, stack, tmp_path, monkeypatch):
    emu = roboflow_emulator(image_count=5, seed=31)
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    options = PipelineOptions(importer_args(emu, stack, tmp_path, DATASET) + ["--runner=FnApiRunner"])
    opts = options.view_as(ImportOptions)
    checked = preflight.check(opts)
    context = ImportContext(DATASET, checked.workspace, checked.project, None, checked.supabase.bucket, {}, None)
    p = beam.Pipeline(options=options)
    importer.build_pipeline(p, checked, context, opts, shards=4)
    proto = p.to_runner_api()
    dofns = b""
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.payload:  # Beam's own combiner plumbing carries no pickled DoFn
                dofns += cloudpickle.dumps(pickler.loads(payload.do_fn.payload))  # uncompressed, scannable
        dofns += b"".join(str(d).encode() for d in transform.display_data)
    everything = proto.SerializeToString() + dofns + repr(options.get_all_options()).encode()
    assert_no_secret(everything, emu.config.api_key, stack.service_role_key)
    assert b"ROBOFLOW_API_KEY" in dofns and b"SUPABASE_SERVICE_ROLE_KEY" in dofns  # where the keys are, only


def test_fault_run_and_bad_key_write_no_secret_anywhere(roboflow_emulator, stack, tmp_path):
    emu = roboflow_emulator(image_count=120, seed=32, image_kb_max=6,
                            faults=FaultConfig(throttle_rate=0.2, server_error_rate=0.05, reset_rate=0.02,
                                               truncate_rate=0.02, deleted_after_listing=3, undecodable=2,
                                               error_style={"image_details": "object"}))
    stack.faults = StackFaults(storage_5xx_rate=0.05, rest_503_rate=0.03)
    faulty = start_import(emu, stack, tmp_path / "faulty", DATASET, env={"PYTHONLOGLEVEL": "DEBUG"})
    assert faulty.wait(300) == importer.EXIT_INCOMPLETE

    wrong_key = "rf_WRONG_" + uuid.uuid4().hex
    bad = start_import(emu, stack, tmp_path / "bad-key", DATASET, env={"ROBOFLOW_API_KEY": wrong_key})
    assert bad.wait(120) == importer.EXIT_INPUT
    assert "401" in (tmp_path / "bad-key" / "stderr.txt").read_text()

    written = every_byte_written(tmp_path)
    assert b"dead_letters" in written or (tmp_path / "faulty" / "dead").exists()
    assert_no_secret(written, emu.config.api_key, stack.service_role_key, wrong_key)
    # the emulator did echo the wrong key back, so the redaction was exercised
    assert emu.counters().get("status:401", 0) >= 1


def test_logs_at_debug_level_carry_no_secret(roboflow_emulator, stack, tmp_path, monkeypatch, caplog):
    emu = roboflow_emulator(image_count=20, seed=33, faults=FaultConfig(throttle_rate=0.3, reset_rate=0.05))
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    with caplog.at_level("DEBUG"):
        importer.run(importer_args(emu, stack, tmp_path, DATASET))
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert len(caplog.records) > 10
    assert_no_secret(text.encode(), emu.config.api_key, stack.service_role_key)
    assert os.environ["ROBOFLOW_API_KEY"] == emu.config.api_key
