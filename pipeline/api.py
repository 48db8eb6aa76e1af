"""The platform's Python call: import a Roboflow project into a dataset from inside its asyncio backend.

The platform's endpoint keeps its call site and swaps only the import behind it::

    from pipeline.api import streaming_import_from_roboflow

    result = await streaming_import_from_roboflow(
        api_key=key, workspace="acme", project="hard-hats", dataset_id=dataset_id,
        class_mapping=request.class_mapping,  # [{source_name, target_class_id, create_new, skip, color}]
        concurrency=10, progress_callback=on_progress,  # on_progress(processed, total, message)
        job_id=job_id, checkpoint=None)
    result.success, result.images_imported, result.errors   # the platform's fields ...
    result.counts, result.dead_letters, result.summary      # ... next to ours

The same import has two more shapes, both coroutines: the platform's class,
``await RoboflowStreamingImporter(api_key, workspace, project, dataset_id, class_mapping,
job_id="").import_dataset(concurrency=25, progress_callback=None, checkpoint=None)`` (3-argument
callback), and the design plan's, ``await RoboflowStreamingImporter().import_dataset(api_key,
workspace, project, version, dataset_id, class_mapping, concurrency=20, progress_callback=None)``
(callback gets a :class:`Progress`).

Why a worker process per import (``python -m pipeline.import_worker``, not a thread or
``multiprocessing``): the Beam pipeline holds the GIL for much of its work, so in a thread it would
still stall the caller's event loop; in its own process the loop only reads a pipe. A crash, a leak
or a stuck library in the pipeline ends that process, not the web service. The request travels on
the child's stdin as one JSON line: option values (the class mapping's entries among them, no file),
which the child parses once into the pipeline's options, and the keys, so neither the parent's
``os.environ`` nor any argv or option ever holds them, and two imports with different keys run at
the same time without a lock (each child's environment is its own; the child is started without
the parent's ``ROBOFLOW_API_KEY``/``SUPABASE_SERVICE_ROLE_KEY``). A fresh
``python -m`` interpreter, unlike ``multiprocessing``'s spawn, does not re-import the web service's
``__main__``. The cost is the child's start per import: its Python and Beam imports, 5 to 8 s on a
loaded 2-core machine (README, "Python API").

Progress and log records come back over the child's stdout pipe and are handled on the caller's
loop thread in the order sent: the callback runs at least every 10 finished images
(``pipeline/progress.py`` MILESTONE) and once at the end with ``processed == total`` when every
listed image finished. A callback may be a plain function or a coroutine function; one that raises
is logged (redacted) and the import goes on.

Cancelling the awaiting task closes the child's stdin, on which the child exits at once (killed
after :data:`STOP_GRACE` seconds otherwise), and raises :class:`ImportCancelled`. Every write is
idempotent (deterministic storage paths, upserts on unique keys), so nothing needs undoing: running
the same import again completes it. That is also what ``checkpoint`` would do: it is accepted for
the platform's call site and not needed. The run is recorded in ``od_import_runs`` (migration 0007,
named by ``job_id``), so the next call with the same source and target resumes it: no Roboflow
details call for the images the interrupted run already wrote, whatever its job id.
``pipeline_args=["--change_detection", "listing"]`` makes a sync pay details only for images whose
listing summary changed (README, "Resume and sync").
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pipeline
from pipeline.class_mapping import load_class_mapping
from pipeline.environment import ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV, SUPABASE_URL_ENV
from pipeline.errors import InputError
from pipeline.progress import Progress, render_line
from transforms.core.redact import redact, register_secret

__all__ = ["ImportCancelled", "ImportFailed", "ImportInputError", "ImportResult", "Progress",
           "RoboflowStreamingImporter", "streaming_import_from_roboflow"]

log = logging.getLogger(__name__)
worker_log = logging.getLogger("pipeline.import_worker")
COUNT_KEYS = ("listed", "imported", "new", "changed", "unchanged", "failed")
WORKER_MODULE = "pipeline.import_worker"
STOP_GRACE = 5.0  # seconds a cancelled worker gets to exit on its own before it is killed
MESSAGE_LIMIT = 16 * 1024 * 1024  # longest message line from the worker (a summary is a few kB)
PLATFORM_CONCURRENCY, PLAN_CONCURRENCY = 25, 20  # each form's own default

ProgressCallback = Callable[..., object]


class ImportInputError(ValueError):
    """Bad input or an unusable target, found before anything was written. ``str()`` is one line naming the fix."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class ImportFailed(RuntimeError):
    """The import stopped on an error it could not heal (redacted, one line); running it again resumes it."""


class ImportCancelled(asyncio.CancelledError):
    """The awaiting task was cancelled: the worker is stopped. ``str()`` says how far it got."""


@dataclasses.dataclass(frozen=True)
class ImportResult:
    # The platform's fields.
    success: bool  # = complete: every listed image is in Supabase; otherwise ``errors`` says why not
    images_imported: int  # new + changed: images written by this run
    annotations_imported: int  # annotations written by this run
    images_skipped: int  # unchanged: already imported, identical (a re-run or resume skips these)
    images_failed: int  # dead-lettered; each has a line in ``errors``
    errors: list[str]  # one line per image not imported, then any run-level shortfall; redacted
    # Ours.
    counts: dict[str, int]  # listed, imported (= new + changed + unchanged), new, changed, unchanged, failed
    dead_letters: list[dict[str, str]]  # one per image not imported: image_id, step, error_type, message
    complete: bool
    summary: dict[str, Any]  # the run's full summary (as --summary_path writes it)
    seconds: float
    output_dir: str | None  # dead letters and summary.json; None when they were in a removed temp directory
    job_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def result_from(summary: dict[str, Any], dead_letters: list[dict[str, str]], *, output_dir: str | None,
                job_id: str) -> ImportResult:
    errors = [f"{d['image_id']}: {d['step']}: {d['error_type']}: {d['message']}" for d in dead_letters]
    if summary.get("missing_from_listing"):
        errors.append(f"{summary['missing_from_listing']} images reported by Roboflow were not listed; run again")
    if summary.get("listing_pages_failed"):
        errors.append(f"{summary['listing_pages_failed']} listing pages failed after retries; run again")
    if summary.get("unaccounted"):
        errors.append(f"{summary['unaccounted']} listed images neither imported nor dead-lettered; run again")
    return ImportResult(
        success=bool(summary["complete"]), images_imported=int(summary["new"]) + int(summary["changed"]),
        annotations_imported=int(summary["annotations"]), images_skipped=int(summary["unchanged"]),
        images_failed=int(summary["failed"]), errors=[redact(e) for e in errors],
        counts={key: int(summary[key]) for key in COUNT_KEYS}, dead_letters=dead_letters,
        complete=bool(summary["complete"]), summary=summary, seconds=float(summary["seconds"]),
        output_dir=output_dir, job_id=job_id)


@dataclasses.dataclass(frozen=True)
class ImportRequest:
    api_key: str
    workspace: str
    project: str
    version: int | None
    dataset_id: str
    class_mapping: list[dict[str, Any]] | str


class RoboflowStreamingImporter:
    """Both shapes of the call: the platform's (the request in the constructor) and the plan's (in the call).

    Supabase URL and service-role key default to ``$SUPABASE_URL``/``$SUPABASE_SERVICE_ROLE_KEY``.
    """

    def __init__(self, api_key: str | None = None, workspace: str | None = None, project: str | None = None,
                 dataset_id: str | None = None, class_mapping: list[dict[str, Any]] | str | None = None,
                 job_id: str = "", *, version: int | None = None, supabase_url: str | None = None,
                 supabase_key: str | None = None, roboflow_api_url: str | None = None,
                 output_dir: str | None = None, pipeline_args: list[str] | None = None):
        given = (api_key, workspace, project, dataset_id, class_mapping)
        self._request = None
        if any(value is not None for value in given):
            self._request = ImportRequest(api_key, workspace, project, version, dataset_id, class_mapping)
            if isinstance(api_key, str):
                register_secret(api_key.strip())
        self.job_id = str(job_id or "")
        self.supabase_url = supabase_url
        self._supabase_key = supabase_key
        self.roboflow_api_url = roboflow_api_url
        self.output_dir = output_dir  # None: a temporary directory per call, removed after it
        self.pipeline_args = list(pipeline_args or [])  # more importer/Beam flags, e.g. --create_bucket

    def __repr__(self) -> str:  # never the key
        return f"RoboflowStreamingImporter(supabase_url={self.supabase_url!r}, job_id={self.job_id!r})"

    async def import_dataset(self, api_key: str | None = None, workspace: str | None = None,
                             project: str | None = None, version: int | None = None, dataset_id: str | None = None,
                             class_mapping: list[dict[str, Any]] | str | None = None,
                             concurrency: int | None = None, progress_callback: ProgressCallback | None = None,
                             checkpoint: object = None) -> ImportResult:
        """Import ``workspace/project`` into ``dataset_id`` in a worker process; see the module docstring.

        With the request given to the constructor (the platform's form), call with keywords only and
        ``progress_callback(processed, total, message)``; otherwise pass the request here (the plan's
        form) and ``progress_callback(Progress)``. ``class_mapping``: the platform's list of
        ``{source_name, target_class_id, create_new, skip, color}`` (every Roboflow class needs one
        entry), or ``"auto"``. Raises :class:`ImportInputError` before any write,
        :class:`ImportFailed` when the run stopped, :class:`ImportCancelled` when cancelled.
        ``checkpoint`` is accepted and unused: running the same import again resumes it.
        """
        del checkpoint  # resuming is running again: every write is idempotent
        in_call = (api_key, workspace, project, version, dataset_id, class_mapping)
        if self._request is not None:
            if any(value is not None for value in in_call):
                raise ImportInputError("the request was given to RoboflowStreamingImporter(...); call "
                                       "import_dataset(concurrency=..., progress_callback=..., checkpoint=...) "
                                       "without it, or build RoboflowStreamingImporter() and pass it here")
            request, report = self._request, platform_progress(progress_callback)
            concurrency = PLATFORM_CONCURRENCY if concurrency is None else concurrency
        else:
            request, report = ImportRequest(*in_call), progress_callback
            concurrency = PLAN_CONCURRENCY if concurrency is None else concurrency
        request = dataclasses.replace(request, class_mapping=plain_entries(request.class_mapping))
        options, keys = self._checked(request, concurrency)
        with _output_directory(self.output_dir) as out:
            options |= {"dead_letter_path": str(out / "dead_letters"), "summary_path": str(out / "summary.json")}
            worker_request = {"options": options, "pipeline_args": self.pipeline_args, **keys}
            summary, letters = await WorkerRun(worker_request, report).run()
            return result_from(summary, letters, output_dir=str(out) if self.output_dir else None,
                               job_id=self.job_id)

    def _checked(self, request: ImportRequest, concurrency: object) -> tuple[dict[str, Any], dict[str, str]]:
        """The worker's option values and keys; :class:`ImportInputError` for what is wrong with the call itself."""
        api_key = request.api_key
        if not isinstance(api_key, str) or not api_key.strip():
            raise ImportInputError("api_key is empty; pass the workspace's private Roboflow API key")
        api_key = api_key.strip()
        register_secret(api_key)
        names = {"workspace": "the Roboflow workspace (as in its URL)",
                 "project": "the Roboflow project (as in its URL)", "dataset_id": "the target dataset's id"}
        for name, what in names.items():
            if not str(getattr(request, name) or "").strip():
                raise ImportInputError(f"{name} is empty; pass {what}")
        supabase_url = self.supabase_url or os.environ.get(SUPABASE_URL_ENV, "")
        supabase_key = (self._supabase_key or os.environ.get(SUPABASE_KEY_ENV, "")).strip()
        if not supabase_url:
            raise ImportInputError(f"no Supabase URL; pass supabase_url= or set {SUPABASE_URL_ENV}")
        if not supabase_key:
            raise ImportInputError(f"no Supabase service-role key; pass supabase_key= or set {SUPABASE_KEY_ENV}")
        register_secret(supabase_key)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency <= 0:
            raise ImportInputError(f"concurrency must be a positive integer (got {concurrency!r}); 20 is the default")
        version = request.version
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ImportInputError(f"version must be an integer or None (got {version!r})")
        if request.class_mapping is None:
            raise ImportInputError('class_mapping is missing; pass the request\'s list of entries, or "auto"')
        try:
            load_class_mapping(request.class_mapping)  # checked here as the worker checks it: no temp file
        except InputError as exc:
            raise ImportInputError(redact(exc)) from None
        options = {  # None: the option's default (pipeline/validation.py, options_from_values)
            "roboflow_workspace": str(request.workspace).strip(), "roboflow_project": str(request.project).strip(),
            "dataset_id": str(request.dataset_id).strip(), "supabase_url": supabase_url, "concurrency": concurrency,
            "quiet": True, "class_mapping": request.class_mapping, "roboflow_version": version,
            "roboflow_api_url": self.roboflow_api_url,
            "run_id": self.job_id or None,  # names the run in od_import_runs; resuming does not depend on it
        }
        return options, {"roboflow_key": api_key, "supabase_key": supabase_key}


async def streaming_import_from_roboflow(api_key: str, workspace: str, project: str, dataset_id: str,
                                         class_mapping: list[dict[str, Any]] | str, concurrency: int = 10,
                                         progress_callback: ProgressCallback | None = None, job_id: str = "",
                                         checkpoint: object = None, version: int | None = None,
                                         **importer_settings: Any) -> ImportResult:
    """The platform's call, unchanged at its call site; ``progress_callback(processed, total, message)``.

    ``importer_settings`` go to :class:`RoboflowStreamingImporter` (``supabase_url``, ``supabase_key``,
    ``roboflow_api_url``, ``output_dir``, ``pipeline_args``).
    """
    importer = RoboflowStreamingImporter(api_key, workspace, project, dataset_id, class_mapping, job_id,
                                         version=version, **importer_settings)
    return await importer.import_dataset(concurrency=concurrency, progress_callback=progress_callback,
                                         checkpoint=checkpoint)


def plain_entries(mapping: object) -> object:
    """Mapping entries as plain dicts. The platform's endpoint is FastAPI, so its request may hold them
    as pydantic models (inferred from its framework, not read in its source): ``model_dump()`` each."""
    if isinstance(mapping, list):
        return [entry.model_dump() if hasattr(entry, "model_dump") else entry for entry in mapping]
    return mapping


def platform_progress(callback: ProgressCallback | None) -> Callable[[Progress], object] | None:
    """The platform's ``(processed, total, message)`` callback as one that takes a :class:`Progress`."""
    if callback is None:
        return None
    return lambda progress: callback(progress.done, progress.total, render_line(progress))


class WorkerRun:
    """One worker process, driven from the caller's event loop: request in, messages out, stopped on cancel."""

    def __init__(self, request: dict[str, Any], callback: Callable[[Progress], object] | None):
        self.request = request
        self.callback = callback
        self.latest: Progress | None = None
        self.summary: dict[str, Any] | None = None
        self.dead_letters: list[dict[str, str]] = []
        self.error: Exception | None = None
        self._callback_failures = 0

    async def run(self) -> tuple[dict[str, Any], list[dict[str, str]]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=worker_environment(), limit=MESSAGE_LIMIT,
            start_new_session=True)  # the service's Ctrl-C reaches the parent, which stops the worker
        stderr = asyncio.ensure_future(forward_stderr(process.stderr))
        try:
            try:
                process.stdin.write(json.dumps(self.request).encode("utf-8") + b"\n")
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker died on start: its exit code and stderr say why, below
            async for line in process.stdout:
                await self.handle(json.loads(line))
            code = await process.wait()
            await asyncio.wait([stderr], timeout=STOP_GRACE)  # a leftover grandchild may hold stderr open
        except asyncio.CancelledError:
            await stop(process)
            progress = self.latest
            where = f"after {progress.done} of {progress.total} images" if progress else "before the first image"
            raise ImportCancelled(f"import cancelled {where}; its worker process was stopped; run the same "
                                  "import again to complete it (every write is idempotent)") from None
        finally:
            if process.returncode is None:
                process.kill()
            stderr.cancel()
        if self.error is not None:
            raise self.error
        if self.summary is None:
            raise ImportFailed(f"the import's worker process exited with code {code} before reporting a result "
                               f"(its last words are in the {worker_log.name} log); running the same import "
                               "again resumes it")
        return self.summary, self.dead_letters

    async def handle(self, message: dict[str, Any]) -> None:
        kind, body = message.get("kind"), message.get("body")
        if kind == "progress":
            self.latest = Progress(**body)
            await self.report(self.latest)
        elif kind == "log":
            emit(body)
        elif kind == "dead_letter":
            self.dead_letters.append({key: redact(value) for key, value in body.items()})
        elif kind == "result":
            self.summary = body
        elif kind == "input_error":
            self.error = ImportInputError(redact(body))
        elif kind == "failed":
            self.error = ImportFailed(redact(body))

    async def report(self, progress: Progress) -> None:
        if self.callback is None:
            return
        try:
            outcome = self.callback(progress)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # the platform's callback must not kill the import
            self._callback_failures += 1
            if self._callback_failures <= 3:
                log.warning("progress callback failed (the import goes on): %s: %s", type(exc).__name__, redact(exc))


def emit(record: dict[str, Any]) -> None:
    """A worker's log record on the logger of the same name here, redacted again (this process knows every key)."""
    logger, level = logging.getLogger(str(record["name"])), int(record["level"])
    if logger.isEnabledFor(level):
        logger.handle(logging.makeLogRecord({"name": logger.name, "levelno": level,
                                             "levelname": logging.getLevelName(level),
                                             "msg": redact(record["message"]), "pathname": WORKER_MODULE}))


async def stop(process: asyncio.subprocess.Process) -> None:
    """End the worker: closing its stdin makes it exit at once; killed if it has not after STOP_GRACE, and
    with it anything it started."""
    if process.returncode is None:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            process.kill()
            await process.wait()
    try:  # processes the worker started (Beam's multi_processing workers) are in its session's group
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def forward_stderr(stream: asyncio.StreamReader) -> None:
    """What the worker wrote outside its log records (a crash's traceback, a library's print), redacted."""
    async for line in stream:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            worker_log.warning("%s", redact(text))


def worker_environment() -> dict[str, str]:
    """The parent's environment without its keys, and this checkout first on the worker's path."""
    env = {name: value for name, value in os.environ.items() if name not in (ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV)}
    root = str(Path(pipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


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
    """The keys where the pipeline's SecretRefs read them, for this run only (the worker's, the fault run's)."""
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
