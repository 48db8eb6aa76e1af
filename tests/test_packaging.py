"""The product as a Dataflow worker gets it: the sdist Beam builds from ``setup.py``, installed with pip
into a new virtualenv, run from outside the source tree.

Why the new virtualenv borrows the dev venv's third-party packages: installing ``apache-beam[gcp]``
and the rest from scratch takes over a minute and needs the network (beam.md §13: 75.8 s, 119
packages), while a worker gets them from Dataflow's container anyway. So the new venv sees a copy of
the dev venv's site-packages *without* this product (no editable finder, no dist-info), added with
``site.addsitedir``, and pip installs the product from the sdist with ``--no-index``: the install only
succeeds if every ``install_requires`` entry is satisfied by the pinned packages, and the product's
modules can only come from the sdist. What ``install_requires`` must contain is checked separately,
against the modules the code imports and against ``requirements.txt``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest
from apache_beam.runners.portability.stager import Stager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "roboflow-supabase-import"
PRODUCT_ENTRIES = ("roboflow_supabase_import", "__editable__", "__editable___roboflow_supabase_import")


def setup_metadata() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """install_requires and extras_require, read from setup.py's call without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setup")
    wanted = ("install_requires", "extras_require")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg in wanted}
    return ([Requirement(r) for r in kwargs["install_requires"]],
            {k: [Requirement(r) for r in v] for k, v in kwargs["extras_require"].items()})


def imported_distributions(directory: Path, skip: Path | None = None) -> dict[str, set[str]]:
    """Distribution name -> the product modules importing it, for every third-party import under ``directory``."""
    owners = importlib.metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for path in directory.rglob("*.py"):
        if skip is not None and skip in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("pipeline", "transforms", "__future__"):
                    continue
                for dist in owners.get(top, [f"<no distribution provides {top}>"]):
                    found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(REPO)))
    return found


def test_install_requires_covers_every_import_and_matches_requirements_txt():
    requires, extras = setup_metadata()
    declared = {canonicalize_name(r.name) for r in requires}
    # supabase brings postgrest and storage3, which the Supabase client imports directly.
    via_supabase = {canonicalize_name(Requirement(r).name) for r in importlib.metadata.requires("supabase") or []}
    product = imported_distributions(REPO / "pipeline", skip=REPO / "pipeline" / "testing")
    product.update({k: product.get(k, set()) | v for k, v in imported_distributions(REPO / "transforms").items()})
    missing = {dist: where for dist, where in product.items() if dist not in declared | via_supabase}
    assert not missing, f"imported but not in install_requires: {missing}"
    demo = imported_distributions(REPO / "pipeline" / "testing")
    demo_declared = declared | via_supabase | {canonicalize_name(r.name) for r in extras["demo"]}
    assert not {d: w for d, w in demo.items() if d not in demo_declared}, "the demo's stand-ins need more extras"

    pinned = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split(" #", 1)[0].strip()  # pip's inline comments
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[canonicalize_name(requirement.name)] = requirement
    for requirement in requires:
        pin = pinned.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is in setup.py but not pinned in requirements.txt"
        version = next(iter(pin.specifier)).version
        assert requirement.specifier.contains(version), f"requirements.txt pins {pin}, setup.py asks {requirement}"
        assert requirement.extras <= pin.extras, f"setup.py asks {requirement}, requirements.txt pins {pin}"
    assert set(pinned) == declared, "requirements.txt and setup.py name different runtime packages"


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="packaging-test-"))
    path.chmod(0o755)  # the demo's PostgreSQL runs as the postgres user and must reach its data directory
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def third_party_site(into: Path) -> Path:
    """The dev venv's site-packages without this product, as symlinks."""
    into.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(PRODUCT_ENTRIES):
            (into / entry.name).symlink_to(entry)
    return into


def test_the_sdist_beam_stages_installs_and_runs_the_demo_outside_the_source_tree(workdir):
    sdist = Path(Stager._build_setup_package(str(REPO / "setup.py"), str(workdir)))  # what --setup_file stages
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(n.endswith("pipeline/migrations/0004_import_tracking.sql") for n in names)
    assert any(n.endswith("pipeline/launch.py") for n in names) and any(n.endswith("transforms/batch_step.py")
                                                                       for n in names)
    assert not any("/tests/" in n for n in names)

    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_dir = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    borrowed = third_party_site(workdir / "third-party")
    (site_dir / "zz_third_party.pth").write_text(f"import site; site.addsitedir({str(borrowed)!r})\n")

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ROBOFLOW_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation",
                              "--no-cache-dir", "--disable-pip-version-check", f"{sdist}[demo]"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    where = subprocess.run([str(python), "-c", "import json, pipeline, transforms, pipeline.testing.supabase_stack."
                            "stack as s; print(json.dumps([pipeline.__file__, transforms.__file__, "
                            "str(s.MIGRATIONS_DIR)]))"], cwd=workdir, env=env, capture_output=True, text=True,
                           check=True)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(venv) and not Path(path).is_relative_to(REPO), path

    env["POSTGREST_BIN"] = str(REPO / ".cache" / "bin" / "postgrest")  # a binary, not part of the package
    demo = subprocess.run([str(python), "-m", "pipeline.demo", "--images", "20", "--workdir", str(workdir / "demo")],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    summary = json.loads((workdir / "demo" / "summary.json").read_text())
    assert summary["listed"] == summary["imported"] == summary["new"] == 20 and summary["failed"] == 0
    assert "rows:     {'images': 20" in demo.stdout
