"""Checks of the remote services before anything is written: the Roboflow project and version, the
Supabase target (reachable, service key accepted, schema migrated, dataset, classes, bucket), and the
translation of their failures into one line naming the fix.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from pipeline.class_mapping import ResolvedMapping
from pipeline.environment import ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV
from pipeline.errors import InputError
from pipeline.options import ImportOptions
from pipeline.project_types import ProjectType, project_type, skeletons_of
from pipeline.validation import check_class_filter, listing_spec
from transforms.clients.listing import Selection, fetch_page
from transforms.clients.roboflow import RoboflowClient, RoboflowError, RoboflowStopped
from transforms.clients.supabase import SupabaseClient, missing_function
from transforms.core.convert import IMAGE_MIME_TYPES, mime_allowed, size_limit_bytes
from transforms.core.redact import redact
from transforms.core.retry import PermanentError, RetryPolicy, TransientError, call_with_retries
from transforms.core.tables import OD, PlatformTables

PREFLIGHT_READS = 3  # Roboflow reads check_roboflow sends at once: a client for it needs as many connections
SCHEMA_VERSION = 7  # every run records itself in od_import_runs and writes 0007's link columns
MARK_SCHEMA_VERSION = 5  # --prune_mode mark writes od_dataset_images.source_missing_at (0005, within 7)
CLS_SCHEMA_VERSION = 6  # classification imports: the cls_* keys of 0006
CLS_MIGRATION = "pipeline/migrations/0006_classification_import.sql"
PREFLIGHT_RETRY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, max_elapsed=20.0)
# The first Supabase request only tells whether anything answers: a few quick tries, not 20 s.
PROBE_RETRY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, max_elapsed=6.0)
MIGRATIONS = {
    1: "pipeline/migrations/0001_platform_schema.sql",
    2: "pipeline/migrations/0002_idempotent_import.sql",
    4: "pipeline/migrations/0004_import_tracking.sql",
    5: "pipeline/migrations/0005_source_missing.sql",
    7: "pipeline/migrations/0007_import_runs.sql",
}
IMPORT_COLUMNS = "id,source_ref,storage_bucket,storage_path,file_hash"  # added by 0002


def _connection_reason(text: str) -> str:
    """A short cause for a failed connection, instead of urllib3's or httpx's nested repr."""
    lowered = text.lower()
    for needles, reason in ((("refused",), "connection refused"),
                            (("name or service not known", "nodename nor servname", "name resolution",
                              "getaddrinfo", "no address associated"), "host name not found"),
                            (("timed out", "timeout"), "timed out"),
                            (("ssl", "certificate", "tls"), "TLS handshake failed"),
                            (("reset", "aborted", "disconnected", "closed"), "connection dropped")):
        if any(needle in lowered for needle in needles):
            return reason
    return "connection failed"


def key_source_of(secret_version: str | None, env_var: str) -> str:
    return f"secret {secret_version}" if secret_version else env_var


def roboflow_failure(exc: Exception, what: str, fix: str, api_url: str, key_source: str) -> InputError:
    status = getattr(exc, "status", None)
    if isinstance(exc, RoboflowStopped) and status in (402, 423):
        return InputError(f"Roboflow refused {what} ({status} {exc.kind}); {exc.fix}")
    if isinstance(exc, RoboflowError) and status == 401:
        return InputError(f"Roboflow rejected the API key in {key_source} (401); set it to your workspace's "
                          "private API key (Roboflow: Settings > API Keys)")
    if isinstance(exc, RoboflowError) and status == 403:
        return InputError(f"Roboflow refused access to {what} (403); use the private API key of the workspace "
                          "that owns it")
    if isinstance(exc, RoboflowError) and status == 404:
        return InputError(f"Roboflow {what} not found (404); {fix}")
    if isinstance(exc, TransientError) and exc.kind == "connection":
        return InputError(f"cannot reach the Roboflow API at {api_url} ({_connection_reason(str(exc))}); "
                          "check --roboflow_api_url (default https://api.roboflow.com) and the network")
    if isinstance(exc, TransientError) and exc.kind in ("bad_json", "bad_page"):
        return InputError(f"{api_url} does not answer like the Roboflow API ({what}: {redact(exc)}); "
                          "check --roboflow_api_url (default https://api.roboflow.com)")
    if isinstance(exc, TransientError):
        return InputError(f"the Roboflow API keeps failing for {what} ({redact(exc)[:160]}); "
                          "try again later (status: https://status.roboflow.com)")
    return InputError(f"Roboflow {what}: {redact(exc)[:200]}; {fix}")


def check_roboflow(opts: ImportOptions, client: RoboflowClient,
                   selection: Selection | None = None) -> tuple[dict, dict | None, int, dict | None]:
    """Workspace, project and version exist and the project's type can be imported; returns project
    info, version splits, listing total and (keypoint projects) the version's skeletons.

    The total is what Roboflow's search reports for the selected images, so a filtered run is
    complete when it imports those (not the whole project)."""
    selection = selection or Selection()
    ws, proj = opts.roboflow_workspace, opts.roboflow_project
    key_source = key_source_of(opts.roboflow_api_key_secret, ROBOFLOW_KEY_ENV)

    def failure(exc: Exception, what: str, fix: str) -> InputError:
        return roboflow_failure(exc, what, fix, client.api_url, key_source)

    # The three reads at once: one after another they were three round trips before the import could start
    # (at 300 ms, from the command's start to its "importing" line: 2.63 s, 2.03 s at once; one run each).
    # Each one's failure is still told in this order.
    with ThreadPoolExecutor(max_workers=PREFLIGHT_READS, thread_name_prefix="preflight") as reads:
        workspace_read = reads.submit(client.workspace, ws)
        project_read = reads.submit(client.project, ws, proj)
        count_spec = dataclasses.replace(listing_spec(opts, selection, 0), page_size=1)
        count_read = reads.submit(fetch_page, client, count_spec)
    try:
        workspace = workspace_read.result()
    except Exception as exc:
        raise failure(exc, f"workspace {ws!r}", "check --roboflow_workspace (the slug in app.roboflow.com/<workspace>)"
                      ) from None
    try:
        project = project_read.result()
    except Exception as exc:
        known = [p.get("id", "").split("/")[-1] for p in workspace.get("workspace", {}).get("projects", [])]
        raise failure(exc, f"project {ws}/{proj}",
                      f"check --roboflow_project (workspace has: {', '.join(known[:10]) or 'no projects'})") from None
    info = project.get("project") or {}
    kind = project_type(info, ws, proj)
    version_splits = version = None
    if opts.roboflow_version is not None:
        available = sorted(int(str(v.get("id", "")).rsplit("/", 1)[-1]) for v in project.get("versions", [])
                           if str(v.get("id", "")).rsplit("/", 1)[-1].isdigit())
        if opts.roboflow_version not in available:
            raise InputError(f"Roboflow version {opts.roboflow_version} of {ws}/{proj} not found; available "
                             f"versions: {', '.join(map(str, available)) or 'none'}; check --roboflow_version")
        try:
            version = client.version(ws, proj, opts.roboflow_version)
        except Exception as exc:
            raise failure(exc, f"version {opts.roboflow_version}", "check --roboflow_version") from None
        version_splits = (version.get("version") or {}).get("splits")
    elif kind.name == "keypoint-detection":  # keypoint names and skeletons are described per version
        newest = max((v for v in project.get("versions", []) if str(v.get("id", "")).rsplit("/", 1)[-1].isdigit()),
                     key=lambda v: int(str(v["id"]).rsplit("/", 1)[-1]), default=None)
        if newest is not None:
            try:
                version = client.version(ws, proj, int(str(newest["id"]).rsplit("/", 1)[-1]))
            except Exception as exc:
                raise failure(exc, f"version {newest['id']}", "try again, or pass --roboflow_version") from None
    skeletons = skeletons_of((version or {}).get("version")) if kind.name == "keypoint-detection" else None
    check_class_filter(selection, info.get("classes") or {}, f"{ws}/{proj}")
    try:
        total = count_read.result().total
    except Exception as exc:
        if selection.query and getattr(exc, "status", None) == 400:
            raise InputError(f"Roboflow rejected --query {selection.query!r} ({redact(exc)[:160]}); check its "
                             "RoboQL syntax") from None
        raise failure(exc, f"search of {ws}/{proj}", "check the project in Roboflow") from None
    if total is None:
        total = int(info.get("images") or 0)
    if selection.active() and not total:
        raise InputError(f"no image of {ws}/{proj} matches {selection.describe()}; check the filter values in "
                         "Roboflow")
    return info, version_splits, int(total), skeletons


def _key_rejected(url: str, key_source: str, detail: str) -> InputError:
    return InputError(f"Supabase at {url} rejected the key in {key_source} ({detail}); set it to this project's "
                      "service_role key (Supabase: Project Settings > API)")


def supabase_failure(exc: Exception, url: str, what: str, key_source: str) -> InputError:
    text = redact(exc)
    if isinstance(exc, TransientError) and exc.kind == "connection":
        return InputError(f"cannot reach Supabase at {url} ({_connection_reason(text)}); check --supabase_url "
                          "(e.g. https://<project-ref>.supabase.co) and that the project is running")
    if any(code in text for code in ("PGRST301", "PGRST302", "JWSError", "JWT", "Invalid authentication",
                                     "Invalid API key", " 401 ", " 403 ")):
        return _key_rejected(url, key_source, text.split(": ", 1)[-1][:100])
    return InputError(f"Supabase {what} failed ({text[:200]}); check --supabase_url and {key_source}")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def probe_supabase(url: str, key: str, key_source: str) -> None:
    """One plain GET of the importer's od_images columns: Supabase answers, takes the key, has 0001 and 0002.

    Plain httpx with a short retry, because postgrest-py retries a refused connection for 7 s
    inside each of our attempts, and an auth failure is plainest as a status code.
    """
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}

    def attempt() -> httpx.Response:
        try:
            response = httpx.get(f"{url}/rest/v1/od_images", params={"select": IMPORT_COLUMNS, "limit": "0"},
                                 headers=headers, timeout=httpx.Timeout(20.0, connect=5.0))
        except httpx.HTTPError as exc:
            raise TransientError("connection", f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"http_{response.status_code}", f"HTTP {response.status_code}",
                                 status=response.status_code)
        return response

    try:
        response = call_with_retries(attempt, PROBE_RETRY)
    except TransientError as exc:
        if exc.kind == "connection":
            raise supabase_failure(exc, url, "probe", key_source) from None
        raise InputError(f"Supabase at {url} keeps answering {exc.status}; try again later or check the "
                         "project's status in the Supabase dashboard") from None
    status, body = response.status_code, _json_or_none(response)
    error = body if isinstance(body, dict) else {}
    code = str(error.get("code") or "")
    detail = redact(" ".join(str(error.get("message") or f"HTTP {status}").split()))[:120]
    if status in (401, 403):
        raise _key_rejected(url, key_source, f"{status}: {detail}")
    if status == 400 and code in ("42703", "PGRST204"):
        raise InputError(f"the database schema is not migrated for the importer ({detail}); apply "
                         f"{MIGRATIONS[2]} and the migrations after it")
    if status == 404 and (code in ("42P01", "PGRST205") or body == {}):
        raise InputError(f"the database at {url} has no od_images table; check --supabase_url, or apply "
                         f"pipeline/migrations/ in order, starting with {Path(MIGRATIONS[1]).name}")
    if status != 200 or not isinstance(body, list):
        raise InputError(f"{url} does not answer like a Supabase project (GET /rest/v1/od_images: HTTP {status}); "
                         "check --supabase_url, e.g. https://<project-ref>.supabase.co")


def check_schema(client: SupabaseClient, url: str, key_source: str, required: int = SCHEMA_VERSION) -> None:
    """The importer's functions exist (its columns were probed); otherwise name the migration to apply."""
    try:
        version = client.rpc("od_import_schema_version", {})
    except (PermanentError, TransientError) as exc:
        if missing_function(exc):
            raise InputError("the database schema is not migrated for the importer (no od_import_schema_version()); "
                             f"apply {MIGRATIONS[4]}") from None
        raise supabase_failure(exc, url, "schema check", key_source) from None
    if not isinstance(version, int) or version < required:
        why = " for --prune_mode mark" if required == MARK_SCHEMA_VERSION else ""
        have = version if isinstance(version, int) else 0
        missing = [path for number, path in sorted(MIGRATIONS.items()) if have < number <= required]
        raise InputError(f"the database schema is at importer version {version}, {required} is needed{why}; "
                         f"apply {', '.join(missing)}")


def check_class_targets(opts: ImportOptions, client: SupabaseClient, mapping: ResolvedMapping, url: str,
                        key_source: str, tables: PlatformTables = OD) -> None:
    """Every target_class_id is a class of this dataset or a shared (dataset-less) one."""
    if not mapping.to_check:
        return
    try:
        rows = client.select(tables.classes, "id,dataset_id", id=sorted(mapping.to_check))
    except (PermanentError, TransientError) as exc:
        raise supabase_failure(exc, url, "class lookup", key_source) from None
    owner = {row["id"]: row.get("dataset_id") for row in rows}
    sources: dict[str, list[str]] = {}
    for name, class_id in sorted(mapping.class_ids.items()):
        if class_id:
            sources.setdefault(class_id, []).append(repr(name))

    def which(class_id: str) -> str:
        names = sources.get(class_id, [])
        return f"target_class_id {class_id} (for {', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"

    unknown = sorted(mapping.to_check - set(owner))
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise InputError(f"class mapping {which(unknown[0])}{more} is not in {tables.classes}; use an existing class "
                         "id or set create_new: true")
    foreign = sorted(i for i, dataset in owner.items() if dataset not in (None, opts.dataset_id))
    if foreign:
        raise InputError(f"class mapping {which(foreign[0])} is a class of another dataset; use a class of dataset "
                         f"{opts.dataset_id} or a shared one, or set create_new: true")


def check_cls_schema(client: SupabaseClient, url: str, key_source: str) -> None:
    """The classification tables carry the importer's keys (migration 0006)."""
    try:
        version = client.rpc("cls_import_schema_version", {})
    except (PermanentError, TransientError) as exc:
        if missing_function(exc):
            version = None
        else:
            raise supabase_failure(exc, url, "schema check", key_source) from None
    if not isinstance(version, int) or version < CLS_SCHEMA_VERSION:
        raise InputError("the database schema is not migrated for classification imports (no "
                         f"cls_import_schema_version() {CLS_SCHEMA_VERSION}); apply {CLS_MIGRATION}")


def check_dataset(opts: ImportOptions, client: SupabaseClient, url: str, key_source: str,
                  kind: ProjectType) -> None:
    """The dataset exists in the project type's module, and a classification dataset's task_type fits."""
    tables = kind.tables
    try:
        found = client.select(tables.datasets, "id,task_type" if kind.task_type else "id", id=opts.dataset_id)
    except (PermanentError, TransientError) as exc:
        raise supabase_failure(exc, url, "dataset lookup", key_source) from None
    if not found:
        module = "classification" if kind.task_type else "object-detection"
        raise InputError(f"dataset {opts.dataset_id} is not in {tables.datasets} at {url}; a {kind.name} project "
                         f"imports into a {module} dataset: create one in the platform first or check --dataset_id")
    task_type = found[0].get("task_type") if kind.task_type else None
    if kind.task_type and task_type != kind.task_type:
        raise InputError(f"dataset {opts.dataset_id} has task_type {task_type!r} but {opts.roboflow_workspace}/"
                         f"{opts.roboflow_project} is a {kind.task_type.replace('_', '-')} classification project; "
                         f"import into a {kind.task_type} cls_datasets row")


def check_supabase(opts: ImportOptions, client: SupabaseClient, url: str, key: str,
                   mapping: ResolvedMapping, kind: ProjectType | None = None,
                   ) -> tuple[bool, int | None, tuple[str, ...] | None]:
    kind = kind or ProjectType("object-detection", False, "")
    key_source = key_source_of(opts.supabase_key_secret, SUPABASE_KEY_ENV)
    probe_supabase(url, key, key_source)
    check_schema(client, url, key_source, max(SCHEMA_VERSION, MARK_SCHEMA_VERSION))
    if kind.tables.kind == "cls":
        check_cls_schema(client, url, key_source)
    check_dataset(opts, client, url, key_source, kind)
    check_class_targets(opts, client, mapping, url, key_source, kind.tables)
    try:
        bucket = client.bucket_info()
    except PermanentError as exc:
        if exc.kind == "bucket_not_found" or exc.status == 404:
            if opts.create_bucket:
                return False, None, None
            raise InputError(f"storage bucket {client.bucket!r} does not exist at {url}; create it in "
                             "Supabase Storage or pass --create_bucket") from None
        raise supabase_failure(exc, url, "bucket lookup", key_source) from None
    except TransientError as exc:
        raise supabase_failure(exc, url, "bucket lookup", key_source) from None
    try:
        limit = size_limit_bytes(bucket.get("file_size_limit"))
    except ValueError as exc:
        raise InputError(f"storage bucket {client.bucket!r}: {exc}; set its file size limit in Supabase "
                         "Storage") from None
    allowed = tuple(bucket.get("allowed_mime_types") or ()) or None
    if allowed and not any(mime_allowed(m, allowed) for m in IMAGE_MIME_TYPES):
        raise InputError(f"storage bucket {client.bucket!r} allows only {', '.join(allowed)}, no image type; "
                         f"allow {', '.join(IMAGE_MIME_TYPES)} (or image/*) in Supabase Storage")
    return True, limit, allowed
