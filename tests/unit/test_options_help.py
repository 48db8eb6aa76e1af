"""``--help`` lists every importer option, one line each, grouped; the README's table is the same list."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.main import run
from pipeline.options import README_BEGIN, README_END, ImportOptions, help_text, markdown_table

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["Source", "Target", "Selection", "Speed", "Reports", "Sync"]


def _importer_flags() -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    ImportOptions._add_argparse_args(parser)
    return [action.option_strings[0] for action in parser._actions]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option_once_on_its_own_line_in_the_six_groups(flag, capsys):
    assert run(["--roboflow_workspace", "ws", flag]) == 0
    out = capsys.readouterr().out
    option_lines = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert sorted(option_lines) == sorted(_importer_flags())
    titles = [line.split(":")[0] for line in out.splitlines() if re.match(r"^[A-Z][a-z]+:", line)]
    assert titles == GROUPS
    assert all(line.split(None, 2)[-1].strip() for line in out.splitlines() if line.startswith("  --"))


def test_help_works_as_a_command_and_prints_no_beam_usage():
    done = subprocess.run([sys.executable, "-m", "pipeline.main", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "--class_mapping FILE|auto" in done.stdout
    assert "--concurrency N" in done.stdout
    assert "usage: main.py" not in done.stdout + done.stderr


def test_readme_option_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    assert readme[begin:end] == markdown_table(), (
        "README option table is stale: regenerate it with python -m pipeline.options")
    table_flags = re.findall(r"^\| \w+ \| `(--\w+)", readme[begin:end], flags=re.MULTILINE)
    assert sorted(table_flags) == sorted(_importer_flags())
    assert all(f"  {flag}" in help_text() for flag in table_flags)
