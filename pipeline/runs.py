"""Import runs (``od_import_runs``, migration 0007): what a run is and whether it finished.

A run is keyed by its source (``roboflow/<workspace>/<project>``), its target dataset and its scope
(the filters, or ``--retry_dead_letters``). A run that did not finish (crash, ``kill -9``, a
cancelled platform call, a stopped Dataflow job) is continued by the next run of the same key: same
run id, one more attempt. Every image's dataset link carries the id of the run that wrote it, so the
continuing run makes no Roboflow details call for the images already written (one Supabase lookup
per batch, transforms/fetch_details.py). Images that changed in Roboflow since the interrupted run
wrote them are picked up by the next full sync, which is a new run.

``--run_id`` (the platform's ``job_id``) names the run; it is a label for finding the run's row,
not part of the key: a platform retry under a new job id still continues the interrupted run.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

from transforms.clients.listing import Selection
from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import project_folder

TABLE = "od_import_runs"
RETRY_SCOPE = "--retry_dead_letters"


@dataclasses.dataclass(frozen=True)
class Run:
    id: str
    name: str | None
    resuming: bool  # continues an interrupted run
    attempts: int
    started_at: str | None = None


def scope_of(selection: Selection, retry: bool = False) -> str:
    """Which images a run covers: the key a later run must share to resume it ('' = whole project)."""
    if retry:
        return RETRY_SCOPE
    return selection.describe() if selection.active() else ""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def source_of(workspace: str, project: str) -> str:
    return project_folder(workspace, project)


def open_run_of(client: SupabaseClient, dataset_id: str, source: str, scope: str) -> dict[str, Any] | None:
    """The latest unfinished run of this key, if any (reads only; ``--plan`` uses it too)."""
    rows = client.select(TABLE, "id,run_name,attempts,started_at", dataset_id=dataset_id, source=source,
                         scope=scope, status="running")
    return max(rows, key=lambda r: str(r.get("started_at") or ""), default=None)


def start_run(client: SupabaseClient, dataset_id: str, source: str, scope: str, name: str | None,
              change_detection: str) -> Run:
    """Continue this key's unfinished run, or record a new one."""
    found = open_run_of(client, dataset_id, source, scope)
    if found is not None:
        attempts = int(found.get("attempts") or 1) + 1
        values: dict[str, Any] = {"attempts": attempts, "resumed_at": _now(), "change_detection": change_detection}
        if name:
            values["run_name"] = name
        client.update_rows(TABLE, values, id=found["id"])
        return Run(found["id"], name or found.get("run_name"), True, attempts, found.get("started_at"))
    run = Run(str(uuid.uuid4()), name, False, 1)
    client.upsert(TABLE, [{"id": run.id, "dataset_id": dataset_id, "source": source, "scope": scope,
                           "run_name": name, "change_detection": change_detection, "status": "running"}],
                  on_conflict="id")
    return run


def finish_run(client: SupabaseClient, run: Run, summary: dict[str, Any]) -> None:
    """The run went through every listed image: the next run of its key is a new one."""
    client.update_rows(TABLE, {"status": "finished", "finished_at": _now(), "summary": summary}, id=run.id)
