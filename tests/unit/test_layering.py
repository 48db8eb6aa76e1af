"""The layering the README promises, read from the imports: the plan and preflight reach no Beam step
module, and the clients and core pieces stay free of Beam (so they are testable without it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP_MODULES = {f"transforms.{path.stem}" for path in (ROOT / "transforms").glob("*.py") if path.stem != "__init__"}


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("name", ["plan.py", "preflight.py", "validation.py", "remote_checks.py", "target.py",
                                  "runs.py", "api.py"])
def test_plan_and_preflight_import_no_step_module(name):
    assert STEP_MODULES, "the step modules were not found"
    assert imported_modules(ROOT / "pipeline" / name) & STEP_MODULES == set()


@pytest.mark.parametrize("path", sorted((ROOT / "transforms" / "clients").glob("*.py"))
                         + sorted((ROOT / "transforms" / "core").glob("*.py")), ids=lambda p: p.name)
def test_clients_and_core_import_no_beam(path):
    """At module level: core/secrets.py reads Secret Manager through Beam's helper only when asked to."""
    assert not any(module.split(".")[0] == "apache_beam" for module in imported_modules(path, top_level_only=True))


def test_validation_touches_no_network():
    """The checks that run first need no remote answer (a typo never waits on a timeout)."""
    network = {"httpx", "requests", "transforms.clients.roboflow", "transforms.clients.supabase",
               "pipeline.remote_checks", "pipeline.target"}
    assert imported_modules(ROOT / "pipeline" / "validation.py") & network == set()
