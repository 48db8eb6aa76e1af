"""Version exports as Roboflow runs them: a job polled with 202 and a progress, then a ZIP behind a link.

The link carries a token, not the API key, and redirects to a signed storage URL, like app.roboflow.com/ds/...
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import tempfile
import threading
from dataclasses import dataclass, field

from ..dataset import VersionSnapshot, make_id
from ..exports import build_export
from ..faults import FaultState
from .context import ApiContext
from .wire import Response, access_denied, json_response


@dataclass
class ExportJob:
    export_id: str
    token: str
    version: int
    export_format: str
    polls: int = 0
    path: str | None = None
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ExportJobs:
    """Every export asked for, by (version, format) and by id; a ZIP is built once, on its first finished poll."""

    def __init__(self, context: ApiContext):
        self.context = context
        self._jobs: dict[tuple[int, str], ExportJob] = {}
        self._jobs_by_id: dict[str, ExportJob] = {}
        self._jobs_lock = threading.Lock()
        self._version_formats: dict[int, list[str]] = {}

    def formats(self, number: int) -> list[str]:
        """The formats built for a version so far (a version object's `exports`)."""
        return list(self._version_formats.get(number, []))

    def poll(self, number: int, version: VersionSnapshot, export_format: str,
             faults: FaultState) -> Response | ExportJob:
        """A 202 with the progress while the job is pending, else the finished job (its ZIP built)."""
        context = self.context
        config = context.config
        with self._jobs_lock:
            job = self._jobs.get((number, export_format))
            if job is None:
                export_id = make_id(config.seed, "export", number, export_format, length=10)
                token = make_id(config.seed, "download-token", number, export_format, length=10)
                job = ExportJob(export_id, token, number, export_format)
                self._jobs[(number, export_format)] = job
                self._jobs_by_id[export_id] = job
        if faults.config.stuck_export:
            return json_response(202, {"progress": 1.4815 if faults.config.export_progress_over_one else 0.9875})
        with job.lock:
            if job.polls < config.export_pending_polls:
                job.polls += 1
                progress = job.polls / (config.export_pending_polls + 1)
                if faults.config.export_progress_over_one:
                    progress = round(progress * 1.5, 4)
                return json_response(202, {"progress": round(progress, 4)})
            if job.path is None:
                if context.export_dir is None:
                    raise RuntimeError("exports need a started emulator")
                handle, path = tempfile.mkstemp(suffix=".zip", dir=context.export_dir)
                os.close(handle)
                job.size = build_export(
                    path,
                    export_format,
                    version,
                    context.dataset.classes,
                    context.dataset.annotation_group,
                    config.workspace,
                    config.project,
                    functools.partial(context.images.export_copy, size_ratio=config.export_size_ratio),
                )
                job.path = path
                formats = self._version_formats.setdefault(number, [])
                if export_format not in formats:
                    formats.append(export_format)
        return job

    def link(self, job: ExportJob) -> str:
        return f"{self.context.cdn_url}/ds/{job.export_id}?key={job.token}"

    def zip_link(self, export_id: str, token: str | None) -> Response:
        """The export link redirects to a signed storage URL, like app.roboflow.com/ds/... does."""
        job = self._jobs_by_id.get(export_id)
        if job is None or job.path is None or token is None or not hmac.compare_digest(token, job.token):
            return access_denied()
        location = f"{self.context.cdn_url}/exports/{export_id}/roboflow.zip?X-Signature={self._signature(export_id)}"
        return Response(302, b"", "text/plain; charset=utf-8", {"Location": location})

    def zip_file(self, export_id: str, signature: str | None) -> Response:
        job = self._jobs_by_id.get(export_id)
        valid = signature is not None and hmac.compare_digest(signature, self._signature(export_id))
        if job is None or job.path is None or not valid:
            return access_denied()
        return Response(200, b"", "application/zip", {}, file_path=job.path, file_size=job.size)

    def _signature(self, export_id: str) -> str:
        return hmac.new(self.context.signing_key, export_id.encode(), hashlib.sha256).hexdigest()[:32]
