"""The platform's Python call: import a Roboflow project into a dataset from inside its backend.

The platform's import endpoint keeps its request and response and swaps only the backend::

    from pipeline.api import RoboflowStreamingImporter

    importer = RoboflowStreamingImporter()  # Supabase from $SUPABASE_URL and $SUPABASE_SERVICE_ROLE_KEY
    result = importer.import_dataset(api_key, "acme", "hard-hats", 3, dataset_id,
                                     request.class_mapping,  # [{source_name, target_class_id, create_new, skip, color}]
                                     concurrency=20,
                                     progress_callback=lambda p: job.update(done=p.done, total=p.total))
    result.counts   # {"listed", "imported", "new", "changed", "unchanged", "failed"}
    result.errors   # [{"image_id", "step", "error_type", "message"}], redacted
    result.complete

It runs the same code path as ``python -m pipeline.main`` (:func:`pipeline.main.execute`): the Beam
pipeline on the local FnApiRunner in this process, with the same preflight, idempotent writes,
dead letters and summary, and prints nothing.

Keys: the Roboflow key is not an option, an argv entry or a log line. The pipeline's DoFns read keys
from the environment (``transforms/core/secrets.py``), so the call puts them in
``ROBOFLOW_API_KEY``/``SUPABASE_SERVICE_ROLE_KEY`` for the run and restores the previous values after.
The environment is the process's, so **calls in one process run one at a time** (a lock; a second
call waits): two imports with different Roboflow keys can never see each other's key. Cached HTTP
clients are keyed by a digest of the key (``transforms/clients/resources.py``), so a later import
with another key never reuses one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import main as importer
from pipeline.class_mapping import AUTO, parse_entries
from pipeline.errors import InputError
from pipeline.preflight import ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV, SUPABASE_URL_ENV
from pipeline.progress import Progress
from transforms.core.redact import install_log_redaction, redact, register_secret
from transforms.dead_letters import read_dead_letters

__all__ = ["ImportInputError", "ImportResult", "Progress", "RoboflowStreamingImporter"]

log = logging.getLogger(__name__)
COUNT_KEYS = ("listed", "imported", "new", "changed", "unchanged", "failed")
_one_import_at_a_time = threading.Lock()


class ImportInputError(ValueError):
    """Bad input or an unusable target, found before anything was written. ``str()`` is one line naming the fix."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


@dataclasses.dataclass(frozen=True)
class ImportResult:
    counts: dict[str, int]  # listed, imported (= new + changed + unchanged), new, changed, unchanged, failed
    errors: list[dict[str, str]]  # one per image not imported: image_id, step, error_type, message (redacted)
    complete: bool  # every listed image is in Supabase and the listing matched Roboflow's count
    summary: dict[str, Any]  # the run's full summary (as --summary_path writes it)
    seconds: float
    output_dir: str | None  # dead letters and summary.json; None when they were in a removed temp directory

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RoboflowStreamingImporter:
    """Imports with the Beam pipeline in this process. Supabase URL and key default to the environment."""

    def __init__(self, supabase_url: str | None = None, supabase_key: str | None = None, *,
                 roboflow_api_url: str | None = None, output_dir: str | None = None,
                 pipeline_args: list[str] | None = None):
        self.supabase_url = supabase_url
        self._supabase_key = supabase_key
        self.roboflow_api_url = roboflow_api_url
        self.output_dir = output_dir  # None: a temporary directory per call, removed after it
        self.pipeline_args = list(pipeline_args or [])  # more importer/Beam flags, e.g. --create_bucket

    def __repr__(self) -> str:  # never the key
        return f"RoboflowStreamingImporter(supabase_url={self.supabase_url!r})"

    def import_dataset(self, api_key: str, workspace: str, project: str, version: int | None, dataset_id: str,
                       class_mapping: list[dict[str, Any]] | str, concurrency: int | None = None,
                       progress_callback: Callable[[Progress], object] | None = None) -> ImportResult:
        """Import ``workspace/project`` into ``dataset_id``; raises :class:`ImportInputError` before any write.

        ``class_mapping``: the platform's list of ``{source_name, target_class_id, create_new, skip,
        color}`` (every Roboflow class needs one entry), or ``"auto"``. ``progress_callback(Progress)``
        is called at least every 50 completed images and once at the end (``done == total`` when
        every listed image finished); an exception it raises is logged and the import goes on.
        """
        if not isinstance(api_key, str) or not api_key.strip():
            raise ImportInputError("api_key is empty; pass the workspace's private Roboflow API key")
        api_key = api_key.strip()
        register_secret(api_key)
        supabase_url = self.supabase_url or os.environ.get(SUPABASE_URL_ENV, "")
        supabase_key = (self._supabase_key or os.environ.get(SUPABASE_KEY_ENV, "")).strip()
        if not supabase_url:
            raise ImportInputError(f"no Supabase URL; pass supabase_url= or set {SUPABASE_URL_ENV}")
        if not supabase_key:
            raise ImportInputError(f"no Supabase service-role key; pass supabase_key= or set {SUPABASE_KEY_ENV}")
        register_secret(supabase_key)
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency <= 0):
            raise ImportInputError(f"concurrency must be a positive integer (got {concurrency!r}); "
                                   "None (the default) sizes it from the latency")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ImportInputError(f"version must be an integer or None (got {version!r})")
        try:
            if class_mapping != AUTO:
                parse_entries(class_mapping, "in the request")
        except InputError as exc:
            raise ImportInputError(exc) from None

        with _output_directory(self.output_dir) as out:
            mapping = AUTO if class_mapping == AUTO else str(out / "class_mapping.json")
            if mapping != AUTO:
                (out / "class_mapping.json").write_text(json.dumps(class_mapping), encoding="utf-8")
            argv = [
                "--roboflow_workspace", str(workspace), "--roboflow_project", str(project),
                "--dataset_id", str(dataset_id), "--supabase_url", supabase_url, "--class_mapping", mapping,
                "--dead_letter_path", str(out / "dead_letters"),
                "--summary_path", str(out / "summary.json"), "--quiet",
            ]
            if concurrency is not None:
                argv += ["--concurrency", str(concurrency)]
            if version is not None:
                argv += ["--roboflow_version", str(version)]
            if self.roboflow_api_url:
                argv += ["--roboflow_api_url", self.roboflow_api_url]
            argv += self.pipeline_args
            with _one_import_at_a_time, keys_in_environment(api_key, supabase_key):
                if logging.getLogger().handlers:  # the platform's handlers; never configure its logging
                    install_log_redaction()
                logging.getLogger("apache_beam").setLevel(logging.WARNING)
                try:
                    outcome = importer.execute(argv, progress_callback)
                except InputError as exc:
                    raise ImportInputError(redact(exc)) from None
            errors = [{"image_id": letter.image_id, "step": letter.step, "error_type": letter.error_type,
                       "message": redact(letter.message)}
                      for letter in read_dead_letters(str(out / "dead_letters"))]
            summary = outcome.summary
            return ImportResult(counts={key: int(summary[key]) for key in COUNT_KEYS}, errors=errors,
                                complete=bool(summary["complete"]), summary=summary,
                                seconds=float(summary["seconds"]),
                                output_dir=str(out) if self.output_dir else None)


@contextmanager
def _output_directory(given: str | None) -> Iterator[Path]:
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="roboflow-import-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def keys_in_environment(roboflow_key: str, supabase_key: str) -> Iterator[None]:
    """The keys where the pipeline's SecretRefs read them, for this run only."""
    saved = {name: os.environ.get(name) for name in (ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV)}
    os.environ[ROBOFLOW_KEY_ENV] = roboflow_key
    os.environ[SUPABASE_KEY_ENV] = supabase_key
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
