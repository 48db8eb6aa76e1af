"""Running the importer from tests: in-process (fast, for assertions on results) or as a subprocess
(exactly what a user sees: stdout, stderr, exit code, and a process that can be killed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline import main as importer
from transforms.dead_letters import read_dead_letters

REPO = Path(__file__).resolve().parents[1]


def importer_args(emu, stack, out: Path, dataset_id: str, *extra: str) -> list[str]:
    argv = [
        "--roboflow_workspace", emu.config.workspace, "--roboflow_project", emu.config.project,
        "--roboflow_api_url", emu.api_url, "--supabase_url", stack.url, "--dataset_id", dataset_id,
        "--dead_letter_path", str(out / "dead"), "--summary_path", str(out / "summary.json"), *extra,
    ]
    if "--class_mapping" not in extra:
        argv += ["--class_mapping", "auto"]
    return argv


def run_import(emu, stack, out: Path, dataset_id: str, *extra: str, monkeypatch) -> tuple[int, dict, list]:
    """In-process run; returns (exit code, summary, dead letters)."""
    monkeypatch.setenv("ROBOFLOW_API_KEY", emu.config.api_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack.service_role_key)
    code = importer.run(importer_args(emu, stack, out, dataset_id, *extra))
    summary = json.loads((out / "summary.json").read_text())
    return code, summary, read_dead_letters(str(out / "dead"))


def start_import(emu, stack, out: Path, dataset_id: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """The importer as a child process (`python -m pipeline.main`), output captured in files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "ROBOFLOW_API_KEY": emu.config.api_key,
                 "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.main", *importer_args(emu, stack, out, dataset_id, *extra)],
        cwd=REPO, env=child_env, stdout=(out / "stdout.txt").open("wb"), stderr=(out / "stderr.txt").open("wb"))
