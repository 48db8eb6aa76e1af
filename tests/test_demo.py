"""The README's first command: the demo import, end to end, as a newcomer runs it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_imports_the_generated_project_and_says_where_to_look():
    workdir = Path(tempfile.mkdtemp(prefix="demo-test-"))
    workdir.chmod(0o755)  # the stack's PostgreSQL runs as the postgres user and must reach its data dir
    try:
        check_demo(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_demo(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", "--images", "40", "--workdir", str(workdir / "demo")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={k: v for k, v in os.environ.items() if k not in ("ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "complete" in result.stdout and "Where to look" in result.stdout
    summary = json.loads((workdir / "demo" / "summary.json").read_text())
    assert summary["listed"] == summary["imported"] == 40 and summary["failed"] == 0
    assert summary["annotations"] > 0
    objects = list((workdir / "demo" / "supabase" / "storage" / "objects" / "od-images").rglob("*.obj"))
    assert len(objects) == 40
    assert str(workdir / "demo" / "supabase" / "storage" / "objects" / "od-images") in result.stdout


def test_demo_switch_imports_a_classification_project_into_cls_tables():
    workdir = Path(tempfile.mkdtemp(prefix="demo-cls-test-"))
    workdir.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.demo", "--images", "30", "--project_type", "classification",
             "--workdir", str(workdir / "demo")],
            cwd=REPO, capture_output=True, text=True, timeout=240,
            env={k: v for k, v in os.environ.items() if k not in ("ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY")},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "classification -> one class per image into cls_labels" in result.stdout
        summary = json.loads((workdir / "demo" / "summary.json").read_text())
        assert summary["target"] == "cls" and summary["imported"] == 30 and summary["failed"] == 0
        assert 0 < summary["annotations"] == 30 - summary["unannotated_images"]
        objects = list((workdir / "demo" / "supabase" / "storage" / "objects" / "cls-images").rglob("*.obj"))
        assert len(objects) == 30
        assert f"'labels': {summary['annotations']}" in result.stdout
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
