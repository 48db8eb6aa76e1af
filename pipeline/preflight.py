"""Everything checked before the first write, then the few writes the pipeline needs first.

:func:`check` validates options, secrets, the Roboflow project and version, the Supabase target
(reachable, service key, schema migrated, dataset, bucket) and the class mapping, and raises
:class:`InputError` with one line naming the fix. Only then does :func:`prepare_target` create the
bucket (with ``--create_bucket``) and the mapped classes, both idempotently.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import uuid
from typing import Any
from urllib.parse import urlparse

import httpx

from pipeline.class_mapping import ResolvedMapping, load_class_mapping, resolve_mapping
from pipeline.errors import InputError
from pipeline.options import ImportOptions
from transforms.clients.resources import RoboflowConfig, SupabaseConfig
from transforms.clients.roboflow import RoboflowClient, RoboflowError
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AdaptiveRateLimiter
from transforms.core.redact import redact
from transforms.core.retry import PermanentError, RetryPolicy, TransientError
from transforms.core.secrets import MissingSecret, SecretRef
from transforms.list_images import ListingSpec

ROBOFLOW_KEY_ENV = "ROBOFLOW_API_KEY"
SUPABASE_KEY_ENV = "SUPABASE_SERVICE_ROLE_KEY"
SUPABASE_URL_ENV = "SUPABASE_URL"
SCHEMA_VERSION = 4
PREFLIGHT_RETRY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, max_elapsed=20.0)
MIGRATIONS = {
    2: "pipeline/migrations/0002_idempotent_import.sql",
    4: "pipeline/migrations/0004_import_tracking.sql",
}


@dataclasses.dataclass(frozen=True)
class Checked:
    """What preflight learned; enough to build the pipeline once the target is prepared."""

    dataset_id: str
    workspace: str
    project: str
    version: int | None
    roboflow: RoboflowConfig
    supabase: SupabaseConfig
    listing: ListingSpec
    project_info: dict[str, Any]
    version_splits: dict[str, int] | None
    mapping: ResolvedMapping
    bucket_exists: bool
    max_object_bytes: int | None


def _require(value: Any, flag: str) -> Any:
    if value in (None, ""):
        raise InputError(f"{flag} is required")
    return value


def _http_url(value: str, flag: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"{flag} {redact(value)!r} is not an http(s) URL; pass e.g. https://host")
    if parsed.query or parsed.username or parsed.password:
        raise InputError(f"{flag} must not carry a query or credentials; keys go in the environment")
    return value.rstrip("/")


def _secret(secret_version: str | None, env_var: str, what: str) -> tuple[SecretRef, str]:
    try:
        ref = SecretRef(secret_version=secret_version) if secret_version else SecretRef(env_var=env_var)
        return ref, ref.resolve()
    except MissingSecret as exc:
        raise InputError(f"{exc}; export the {what} before running") from None
    except ValueError as exc:
        raise InputError(str(exc)) from None


def check_options(opts: ImportOptions) -> None:
    _require(opts.roboflow_workspace, "--roboflow_workspace")
    _require(opts.roboflow_project, "--roboflow_project")
    dataset = _require(opts.dataset_id, "--dataset_id")
    try:
        uuid.UUID(dataset)
    except ValueError:
        raise InputError(f"--dataset_id {dataset!r} is not a UUID; pass the od_datasets.id") from None
    for flag, value in (("--batch_size", opts.batch_size), ("--concurrency", opts.concurrency),
                        ("--shards", opts.shards)):
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be a positive integer (got {value})")
    if opts.roboflow_rate_limit is not None and opts.roboflow_rate_limit <= 0:
        raise InputError(f"--roboflow_rate_limit must be positive (got {opts.roboflow_rate_limit})")
    if opts.roboflow_version is not None and opts.roboflow_version <= 0:
        raise InputError(f"--roboflow_version must be a positive integer (got {opts.roboflow_version})")


def _roboflow_failure(exc: Exception, what: str, fix: str) -> InputError:
    if isinstance(exc, RoboflowError) and exc.status == 401:
        return InputError("Roboflow rejected the API key (401); set ROBOFLOW_API_KEY to a valid private key")
    if isinstance(exc, RoboflowError) and exc.status == 403:
        return InputError(f"Roboflow refused access to {what} (403); use a key of the workspace that owns it")
    if isinstance(exc, RoboflowError) and exc.status == 404:
        return InputError(f"Roboflow {what} not found (404); {fix}")
    if isinstance(exc, TransientError):
        return InputError(f"Roboflow API unreachable or failing for {what} ({redact(exc)}); "
                          "check --roboflow_api_url and try again")
    return InputError(f"Roboflow {what}: {redact(exc)}; {fix}")


def check_roboflow(opts: ImportOptions, client: RoboflowClient) -> tuple[dict, dict | None, int]:
    """Workspace, project and version exist; returns project info, version splits, listing total."""
    ws, proj = opts.roboflow_workspace, opts.roboflow_project
    try:
        workspace = client.workspace(ws)
    except Exception as exc:
        raise _roboflow_failure(exc, f"workspace {ws!r}", "check --roboflow_workspace") from None
    try:
        project = client.project(ws, proj)
    except Exception as exc:
        known = [p.get("id", "").split("/")[-1] for p in workspace.get("workspace", {}).get("projects", [])]
        raise _roboflow_failure(exc, f"project {ws}/{proj}",
                                f"check --roboflow_project (workspace has: {', '.join(known[:10])})") from None
    info = project.get("project") or {}
    version_splits = None
    if opts.roboflow_version is not None:
        available = sorted(int(str(v.get("id", "")).rsplit("/", 1)[-1]) for v in project.get("versions", [])
                           if str(v.get("id", "")).rsplit("/", 1)[-1].isdigit())
        if opts.roboflow_version not in available:
            raise InputError(f"Roboflow version {opts.roboflow_version} of {ws}/{proj} not found; available "
                             f"versions: {', '.join(map(str, available)) or 'none'}; check --roboflow_version")
        try:
            version = client.version(ws, proj, opts.roboflow_version)
        except Exception as exc:
            raise _roboflow_failure(exc, f"version {opts.roboflow_version}", "check --roboflow_version") from None
        version_splits = (version.get("version") or {}).get("splits")
    try:
        if opts.roboflow_listing == "offset":
            total = client.search_page(ws, proj, offset=0, limit=1).total
        else:
            total = client.search_v1_page(ws, f"project:{proj} *", page_size=1).total
    except Exception as exc:
        raise _roboflow_failure(exc, f"search of {ws}/{proj}", "check the project") from None
    if total is None:
        total = int(info.get("images") or 0)
    return info, version_splits, int(total)


def _jwt_role(key: str) -> str | None:
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload.get("role") if isinstance(payload, dict) else None


def _supabase_failure(exc: Exception, url: str, what: str) -> InputError:
    text = redact(exc)
    if isinstance(exc, TransientError) and exc.kind == "connection":
        return InputError(f"cannot reach Supabase at {url} ({text.split(': ', 1)[-1][:120]}); "
                          "check --supabase_url and that the project is running")
    if any(code in text for code in ("PGRST301", "PGRST302", "InvalidJWT", "JWSError", "JWT", "401")):
        return InputError("Supabase rejected the service key; set SUPABASE_SERVICE_ROLE_KEY to the project's "
                          "service_role key")
    return InputError(f"Supabase {what} failed ({text[:200]}); check --supabase_url and the service key")


def check_schema(client: SupabaseClient, url: str) -> None:
    """The importer's columns and functions exist; otherwise name the migration to apply."""
    try:
        client.select("od_images", "id,source_ref,storage_bucket,storage_path,file_hash", id=str(uuid.UUID(int=0)))
    except PermanentError as exc:
        text = str(exc)
        if "42703" in text or "PGRST204" in text or "does not exist" in text:
            raise InputError(f"the database schema is not migrated (od_images has no source_ref); apply "
                             f"{MIGRATIONS[2]} and the migrations after it") from None
        if "42P01" in text or "PGRST205" in text or "postgrest_ " in text or "postgrest_None" in text:
            raise InputError("the od_* tables are missing; apply pipeline/migrations/ in order, starting with "
                             "0001_platform_schema.sql") from None
        raise _supabase_failure(exc, url, "schema check") from None
    except TransientError as exc:
        raise _supabase_failure(exc, url, "schema check") from None
    try:
        version = client.rpc("od_import_schema_version", {})
    except (PermanentError, TransientError) as exc:
        if "PGRST202" in str(exc) or "404" in str(exc) or "42883" in str(exc):
            raise InputError(f"the database schema is not migrated for the importer; apply {MIGRATIONS[4]}") from None
        raise _supabase_failure(exc, url, "schema check") from None
    if not isinstance(version, int) or version < SCHEMA_VERSION:
        raise InputError(f"the database schema is at importer version {version}, {SCHEMA_VERSION} is needed; "
                         f"apply {MIGRATIONS[4]}")


def check_supabase(opts: ImportOptions, client: SupabaseClient, url: str, key: str,
                   mapping: ResolvedMapping) -> tuple[bool, int | None]:
    role = _jwt_role(key)
    if role is not None and role != "service_role":
        raise InputError(f"SUPABASE_SERVICE_ROLE_KEY holds a {role!r} key; the importer needs the service_role key")
    check_schema(client, url)
    try:
        found = client.select("od_datasets", "id", id=opts.dataset_id)
    except Exception as exc:
        raise _supabase_failure(exc, url, "dataset lookup") from None
    if not found:
        raise InputError(f"dataset {opts.dataset_id} is not in od_datasets; create it first or check --dataset_id")
    if mapping.to_check:
        rows = client.select("od_classes", "id", id=sorted(mapping.to_check))
        unknown = sorted(mapping.to_check - {r["id"] for r in rows})
        if unknown:
            raise InputError(f"class mapping target_class_id not in od_classes: {', '.join(unknown[:5])}; "
                             "fix the mapping file or use create_new")
    try:
        bucket = client.bucket_info()
    except PermanentError as exc:
        if exc.kind == "bucket_not_found" or "404" in str(exc):
            if opts.create_bucket:
                return False, None
            raise InputError(f"storage bucket {opts.storage_bucket!r} does not exist; create it in Supabase or "
                             "pass --create_bucket") from None
        raise _supabase_failure(exc, url, "bucket lookup") from None
    except TransientError as exc:
        raise _supabase_failure(exc, url, "bucket lookup") from None
    return True, bucket.get("file_size_limit")


def check(opts: ImportOptions, workers: int = 1) -> Checked:
    """All validation; raises InputError on the first problem. Writes nothing."""
    check_options(opts)
    api_url = _http_url(opts.roboflow_api_url, "--roboflow_api_url")
    supabase_url = opts.supabase_url or os.environ.get(SUPABASE_URL_ENV, "")
    if not supabase_url:
        raise InputError(f"no Supabase URL; pass --supabase_url or set {SUPABASE_URL_ENV}")
    supabase_url = _http_url(supabase_url, "--supabase_url")
    mapping = load_class_mapping(opts.class_mapping)
    rf_ref, rf_key = _secret(opts.roboflow_api_key_secret, ROBOFLOW_KEY_ENV, "Roboflow private API key")
    sb_ref, sb_key = _secret(opts.supabase_key_secret, SUPABASE_KEY_ENV, "Supabase service_role key")

    rf = RoboflowClient(api_url, rf_key, limiter=AdaptiveRateLimiter(opts.roboflow_rate_limit),
                        retry=PREFLIGHT_RETRY, timeout=20.0, pool_size=2)
    try:
        info, version_splits, total = check_roboflow(opts, rf)
    finally:
        rf.close()
    resolved = resolve_mapping(mapping, info.get("classes") or {}, info.get("colors") or {})

    sb = SupabaseClient(supabase_url, sb_key, bucket=opts.storage_bucket, retry=PREFLIGHT_RETRY, timeout=20.0,
                        max_connections=4)
    try:
        bucket_exists, limit = check_supabase(opts, sb, supabase_url, sb_key, resolved)
    except httpx.HTTPError as exc:
        raise _supabase_failure(TransientError("connection", str(exc)), supabase_url, "check") from None
    finally:
        sb.close()

    per_worker_rate = opts.roboflow_rate_limit / max(1, workers) if opts.roboflow_rate_limit else None
    roboflow = RoboflowConfig(api_url, rf_ref, rate_limit=per_worker_rate,
                              pool_size=max(8, opts.concurrency + 4))
    supabase = SupabaseConfig(supabase_url, sb_ref, bucket=opts.storage_bucket,
                              max_connections=max(8, opts.concurrency + 4))
    listing = ListingSpec(opts.roboflow_workspace, opts.roboflow_project, total, mode=opts.roboflow_listing)
    return Checked(opts.dataset_id, opts.roboflow_workspace, opts.roboflow_project, opts.roboflow_version,
                   roboflow, supabase, listing, info, version_splits, resolved, bucket_exists,
                   int(limit) if limit else None)


def prepare_target(checked: Checked) -> dict[str, str | None]:
    """The first writes: the bucket if asked for, then the mapped classes. Returns name -> class id."""
    sb = SupabaseClient(checked.supabase.url, checked.supabase.service_key.resolve(),
                        bucket=checked.supabase.bucket, retry=PREFLIGHT_RETRY)
    try:
        if not checked.bucket_exists:
            sb.create_bucket()
        class_ids = dict(checked.mapping.class_ids)
        if checked.mapping.to_create:
            rows = [{"dataset_id": checked.dataset_id, "name": name, "display_name": name, "color": color}
                    for name, color in sorted(checked.mapping.to_create.items())]
            sb.upsert("od_classes", rows, on_conflict="dataset_id,name", ignore_duplicates=True)
            found = sb.select("od_classes", "id,name", dataset_id=checked.dataset_id,
                              name=sorted(checked.mapping.to_create))
            class_ids.update({r["name"]: r["id"] for r in found})
            missing = sorted(set(checked.mapping.to_create) - {r["name"] for r in found})
            if missing:
                raise RuntimeError(f"classes were not created: {missing}")
        return class_ids
    finally:
        sb.close()


def refresh_counters(checked: Checked) -> None:
    """Recompute the dataset's counters once, after the rows are in (never per row)."""
    sb = SupabaseClient(checked.supabase.url, checked.supabase.service_key.resolve(),
                        bucket=checked.supabase.bucket, retry=PREFLIGHT_RETRY)
    try:
        sb.rpc("od_refresh_dataset_counters", {"p_dataset_id": checked.dataset_id})
    finally:
        sb.close()
