"""Everything checked before the first write, then the few writes the pipeline needs first.

:func:`check` validates the command line, options, output paths, secrets, the Roboflow project and
version, the Supabase target (reachable, service key, schema migrated, dataset, bucket) and the
class mapping, and raises :class:`InputError` with one line naming the fix. Only then does
:func:`prepare_target` create the bucket (with ``--create_bucket``) and the mapped classes, both
idempotently.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline.class_mapping import AUTO, MappingEntry, ResolvedMapping, load_class_mapping, resolve_mapping
from pipeline.errors import InputError
from pipeline.options import ImportOptions, concurrency_of
from transforms.clients.resources import RoboflowConfig, SupabaseConfig
from transforms.clients.roboflow import RoboflowClient, RoboflowError
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, DEFAULT_STALL_TIMEOUT, AdaptiveRateLimiter
from transforms.core.redact import redact
from transforms.core.retry import PermanentError, RetryPolicy, TransientError, call_with_retries
from transforms.core.secrets import MissingSecret, SecretRef
from transforms.list_images import SPLITS, ListingSpec, Selection, fetch_page, selection_body, selection_query

ROBOFLOW_KEY_ENV = "ROBOFLOW_API_KEY"
SUPABASE_KEY_ENV = "SUPABASE_SERVICE_ROLE_KEY"
SUPABASE_URL_ENV = "SUPABASE_URL"
SCHEMA_VERSION = 4
MARK_SCHEMA_VERSION = 5  # --prune_mode mark writes od_dataset_images.source_missing_at
PREFLIGHT_RETRY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, max_elapsed=20.0)
# The first Supabase request only tells whether anything answers: a few quick tries, not 20 s.
PROBE_RETRY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, max_elapsed=6.0)
MIGRATIONS = {
    1: "pipeline/migrations/0001_platform_schema.sql",
    2: "pipeline/migrations/0002_idempotent_import.sql",
    4: "pipeline/migrations/0004_import_tracking.sql",
    5: "pipeline/migrations/0005_source_missing.sql",
}
IMPORT_COLUMNS = "id,source_ref,storage_bucket,storage_path,file_hash"  # added by 0002


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
    selection: Selection = Selection()
    unmapped: tuple[str, ...] = ()  # --plan only: Roboflow classes the mapping misses (an error otherwise)
    prune: str | None = None  # --prune: "delete" or "mark"; None: no pruning


class _CommandLineParser(_BeamArgumentParser):
    """Beam's parser, raising InputError where argparse would print its whole usage text."""

    def error(self, message: str) -> None:
        if message.startswith("ambiguous option: "):  # ignored by Beam's parser too
            return
        raise InputError(f"{message}; see python -m pipeline.main --help")


def check_command_line(flags: list[str] | None) -> None:
    """Every flag is known to Beam or the importer and its value parses.

    Beam drops an unknown flag silently, so a typo (``--batch-size``, ``--create-bucket``) would
    run with the default; a bad value would print argparse's usage text. Both are one line here.
    """
    if not flags:
        return
    parser = _CommandLineParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(flags)
    unknown = [arg for arg in unknown if arg not in ("-h", "--help")]
    if not unknown:
        return
    dashed = [arg for arg in unknown if arg.startswith("-")]
    if not dashed:  # a stray value is not echoed: it may be a pasted key
        option = next((f for f in reversed(flags[:flags.index(unknown[0])]) if f.startswith("-")), None)
        after = f"after {option.split('=', 1)[0]}" if option else "before the first option"
        raise InputError(f"unexpected value {after}; each option takes one value (quote values with spaces)")
    name = dashed[0].split("=", 1)[0]
    if "key" in name.lower() and "secret" not in name.lower() and name != "--dataflow_kms_key":
        raise InputError(f"unknown option {name}; keys are never options: export {ROBOFLOW_KEY_ENV} and "
                         f"{SUPABASE_KEY_ENV}")
    known = [f"--{dest}" for dest in PipelineOptions([]).get_all_options()]
    close = difflib.get_close_matches("--" + name.lstrip("-").replace("-", "_"), known, n=1)
    hint = f"did you mean {close[0]}?" if close else "see python -m pipeline.main --help"
    raise InputError(f"unknown option {name}; {hint}")


def _require(value: Any, flag: str, example: str) -> Any:
    if value in (None, ""):
        raise InputError(f"{flag} is required; pass e.g. {flag} {example}")
    return value


def _http_url(value: str, flag: str, example: str, key_env: str) -> str:
    try:
        parsed = urlparse(value)
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname) and parsed.port != 0
    except ValueError:  # .port of "host:abc" or "host:99999"
        valid = False
    if not valid:
        raise InputError(f"{flag} {redact(value)!r} is not an http(s) URL; pass e.g. {example}")
    if parsed.query or parsed.username or parsed.password:
        raise InputError(f"{flag} must not carry a query or credentials; pass e.g. {example} and put the key "
                         f"in {key_env}")
    return value.rstrip("/")


def _secret(secret_version: str | None, flag: str, env_var: str, what: str) -> tuple[SecretRef, str]:
    try:
        ref = SecretRef(secret_version=secret_version) if secret_version else SecretRef(env_var=env_var)
        return ref, ref.resolve()
    except MissingSecret as exc:
        fix = (f"export {env_var}=<the {what}>" if not secret_version else
               f"check {flag} and grant roles/secretmanager.secretAccessor on it to your account (the launcher "
               "reads it for the preflight checks) and to the workers' service account")
        raise InputError(f"{exc}; {fix} before running") from None
    except ValueError as exc:
        raise InputError(f"{flag}: {exc}") from None


def check_options(opts: ImportOptions) -> None:
    _require(opts.roboflow_workspace, "--roboflow_workspace", "my-workspace (the slug in its Roboflow URL)")
    _require(opts.roboflow_project, "--roboflow_project", "my-project (the slug in its Roboflow URL)")
    dataset = _require(opts.dataset_id, "--dataset_id", "<the od_datasets.id to import into>")
    try:
        uuid.UUID(dataset)
    except ValueError:
        raise InputError(f"--dataset_id {dataset!r} is not a UUID; pass the od_datasets.id") from None
    defaults = ImportOptions([])
    for name in ("batch_size", "concurrency", "shards"):
        value, default = getattr(opts, name), getattr(defaults, name)
        if value is not None and value <= 0:
            hint = (f"omit it for the default {default}" if default is not None else
                    "omit it to size it from the latency" if name == "concurrency" else "omit it for 4 x workers")
            raise InputError(f"--{name} must be a positive integer (got {value}); {hint}")
    rate = opts.roboflow_rate_limit
    if rate is not None and not rate > 0:  # also NaN
        raise InputError(f"--roboflow_rate_limit must be a positive number of requests per second (got {rate}); "
                         "omit it to adapt to Roboflow's 429s")
    stall = opts.roboflow_stall_timeout
    if not stall > 0:  # also NaN
        raise InputError(f"--roboflow_stall_timeout must be a positive number of seconds (got {stall}); "
                         f"omit it for the default {DEFAULT_STALL_TIMEOUT:g}")
    if opts.roboflow_version is not None and opts.roboflow_version <= 0:
        raise InputError(f"--roboflow_version must be a positive integer (got {opts.roboflow_version}); "
                         "pass a version number shown in Roboflow, or omit it")
    if not opts.storage_bucket:
        raise InputError("--storage_bucket is empty; omit it for the default od-images")


def selection_of(opts: ImportOptions) -> Selection:
    """The filters of the command line; the platform's split name ``val`` is taken for Roboflow's ``valid``."""
    split = "valid" if opts.split == "val" else opts.split
    return Selection(split=split, tag=opts.tag, class_name=opts.class_name, query=opts.query)


def check_selection(opts: ImportOptions, selection: Selection) -> None:
    """Filter values and the filter/prune combinations that can work, before any call."""
    for flag, value in (("--split", opts.split), ("--tag", opts.tag), ("--class_name", opts.class_name),
                        ("--query", opts.query)):
        if value is not None and not value.strip():
            raise InputError(f"{flag} is empty; omit it to import every image")
    if selection.split is not None and selection.split not in SPLITS:
        raise InputError(f"--split {opts.split!r} is not a Roboflow split; use one of {', '.join(SPLITS)}")
    if opts.roboflow_listing == "offset" and (selection.split or selection.query):
        flag = "--split" if selection.split else "--query"
        raise InputError(f"{flag} works with the token listing only (Roboflow's project search has no split or "
                         "RoboQL filter); drop --roboflow_listing offset")
    if opts.prune_mode and not opts.prune:
        raise InputError(f"--prune_mode {opts.prune_mode} needs --prune; add --prune or drop --prune_mode")
    if opts.prune and selection.active():
        raise InputError(f"--prune removes images missing from the whole project, so it cannot run with filters "
                         f"({selection.describe()}); run it without filters")
    if opts.plan and opts.retry_dead_letters:
        raise InputError("--plan plans a listing of the project; drop --retry_dead_letters (a retry re-imports "
                         "exactly the dead letters' images)")
    if opts.prune and opts.retry_dead_letters:
        raise InputError("--prune needs the whole project's listing, --retry_dead_letters lists only earlier "
                         "failures; run --prune on a normal import")


def check_class_filter(selection: Selection, classes: dict[str, Any], what: str) -> None:
    if selection.class_name is None or selection.class_name in classes:
        return
    close = difflib.get_close_matches(selection.class_name, list(classes), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise InputError(f"--class_name {selection.class_name!r} is not a class of {what}; {hint}its classes: "
                     f"{', '.join(sorted(classes)[:20]) or 'none'}{' ...' if len(classes) > 20 else ''}")


def unmapped_classes(mapping: list[MappingEntry] | str, classes: dict[str, Any]) -> tuple[str, ...]:
    if mapping == AUTO:
        return ()
    return tuple(sorted(set(classes) - {entry.source_name for entry in mapping}))


def listing_spec(opts: ImportOptions, selection: Selection, total: int) -> ListingSpec:
    """``auto`` reads project-search pages, which have no split or RoboQL filter: those take the token walk."""
    mode = opts.roboflow_listing
    if mode == "auto" and (selection.split or selection.query):
        mode = "token"
    return ListingSpec(opts.roboflow_workspace, opts.roboflow_project, total, mode=mode,
                       filters=selection_body(selection), query=selection_query(selection))


def check_output_paths(opts: ImportOptions) -> None:
    """The summary file and dead-letter directory can be written, known now rather than after the import."""
    for flag, path, is_dir in (("--summary_path", opts.summary_path, False),
                               ("--dead_letter_path", opts.dead_letter_path, True)):
        if not path:
            raise InputError(f"{flag} is empty; omit it for the default under import-output/")
        if "://" in path:  # gs:// and friends: checked by Beam's filesystem when written
            continue
        target = Path(path).absolute()
        if not is_dir and target.is_dir():
            raise InputError(f"{flag} {path} is a directory; pass a file path, e.g. {Path(path, 'summary.json')}")
        if is_dir and target.exists() and not target.is_dir():
            raise InputError(f"{flag} {path} is a file; pass a directory for the dead-letter files")
        ancestor = target if is_dir else target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{flag} {path} lies under the file {ancestor}; choose a path in a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path} is not writable ({ancestor}); choose a writable location")


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


def _key_source(secret_version: str | None, env_var: str) -> str:
    return f"secret {secret_version}" if secret_version else env_var


def _roboflow_failure(exc: Exception, what: str, fix: str, api_url: str, key_source: str) -> InputError:
    status = getattr(exc, "status", None)
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
                   selection: Selection | None = None) -> tuple[dict, dict | None, int]:
    """Workspace, project and version exist; returns project info, version splits, listing total.

    The total is what Roboflow's search reports for the selected images, so a filtered run is
    complete when it imports those (not the whole project)."""
    selection = selection or Selection()
    ws, proj = opts.roboflow_workspace, opts.roboflow_project
    key_source = _key_source(opts.roboflow_api_key_secret, ROBOFLOW_KEY_ENV)

    def failure(exc: Exception, what: str, fix: str) -> InputError:
        return _roboflow_failure(exc, what, fix, client.api_url, key_source)

    try:
        workspace = client.workspace(ws)
    except Exception as exc:
        raise failure(exc, f"workspace {ws!r}", "check --roboflow_workspace (the slug in app.roboflow.com/<workspace>)"
                      ) from None
    try:
        project = client.project(ws, proj)
    except Exception as exc:
        known = [p.get("id", "").split("/")[-1] for p in workspace.get("workspace", {}).get("projects", [])]
        raise failure(exc, f"project {ws}/{proj}",
                      f"check --roboflow_project (workspace has: {', '.join(known[:10]) or 'no projects'})") from None
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
            raise failure(exc, f"version {opts.roboflow_version}", "check --roboflow_version") from None
        version_splits = (version.get("version") or {}).get("splits")
    check_class_filter(selection, info.get("classes") or {}, f"{ws}/{proj}")
    try:
        total = fetch_page(client, dataclasses.replace(listing_spec(opts, selection, 0), page_size=1)).total
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


def check_service_key(key: str, key_source: str) -> None:
    """An anon or publishable key is bound by row-level security (it reads and writes nothing): refuse it."""
    role = _jwt_role(key)
    if key.startswith("sb_publishable_"):
        kind = "a publishable key"
    elif role is not None and role != "service_role":
        kind = f"an {role!r} key" if role[:1] in "aeiou" else f"a {role!r} key"
    else:
        return
    raise InputError(f"{key_source} holds {kind}, not the service key; set it to the project's service_role "
                     "(or sb_secret_) key from Supabase: Project Settings > API")


def _key_rejected(url: str, key_source: str, detail: str) -> InputError:
    return InputError(f"Supabase at {url} rejected the key in {key_source} ({detail}); set it to this project's "
                      "service_role key (Supabase: Project Settings > API)")


def _supabase_failure(exc: Exception, url: str, what: str, key_source: str) -> InputError:
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
            raise _supabase_failure(exc, url, "probe", key_source) from None
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
        text = str(exc)
        if "PGRST202" in text or "42883" in text or getattr(exc, "status", None) == 404:
            raise InputError("the database schema is not migrated for the importer (no od_import_schema_version()); "
                             f"apply {MIGRATIONS[4]}") from None
        raise _supabase_failure(exc, url, "schema check", key_source) from None
    if not isinstance(version, int) or version < required:
        why = " for --prune_mode mark" if required == MARK_SCHEMA_VERSION else ""
        have = version if isinstance(version, int) else 0
        missing = [path for number, path in sorted(MIGRATIONS.items()) if have < number <= required]
        raise InputError(f"the database schema is at importer version {version}, {required} is needed{why}; "
                         f"apply {', '.join(missing)}")


def check_class_targets(opts: ImportOptions, client: SupabaseClient, mapping: ResolvedMapping, url: str,
                        key_source: str) -> None:
    """Every target_class_id is a class of this dataset or a shared (dataset-less) one."""
    if not mapping.to_check:
        return
    try:
        rows = client.select("od_classes", "id,dataset_id", id=sorted(mapping.to_check))
    except (PermanentError, TransientError) as exc:
        raise _supabase_failure(exc, url, "class lookup", key_source) from None
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
        raise InputError(f"class mapping {which(unknown[0])}{more} is not in od_classes; use an existing class id "
                         "or set create_new: true")
    foreign = sorted(i for i, dataset in owner.items() if dataset not in (None, opts.dataset_id))
    if foreign:
        raise InputError(f"class mapping {which(foreign[0])} is a class of another dataset; use a class of dataset "
                         f"{opts.dataset_id} or a shared one, or set create_new: true")


def check_supabase(opts: ImportOptions, client: SupabaseClient, url: str, key: str,
                   mapping: ResolvedMapping) -> tuple[bool, int | None]:
    key_source = _key_source(opts.supabase_key_secret, SUPABASE_KEY_ENV)
    probe_supabase(url, key, key_source)
    check_schema(client, url, key_source, MARK_SCHEMA_VERSION if opts.prune_mode == "mark" else SCHEMA_VERSION)
    try:
        found = client.select("od_datasets", "id", id=opts.dataset_id)
    except (PermanentError, TransientError) as exc:
        raise _supabase_failure(exc, url, "dataset lookup", key_source) from None
    if not found:
        raise InputError(f"dataset {opts.dataset_id} is not in od_datasets at {url}; create it in the platform "
                         "first or check --dataset_id")
    check_class_targets(opts, client, mapping, url, key_source)
    try:
        bucket = client.bucket_info()
    except PermanentError as exc:
        if exc.kind == "bucket_not_found" or exc.status == 404:
            if opts.create_bucket:
                return False, None
            raise InputError(f"storage bucket {opts.storage_bucket!r} does not exist at {url}; create it in "
                             "Supabase Storage or pass --create_bucket") from None
        raise _supabase_failure(exc, url, "bucket lookup", key_source) from None
    except TransientError as exc:
        raise _supabase_failure(exc, url, "bucket lookup", key_source) from None
    return True, bucket.get("file_size_limit")


def check(opts: ImportOptions, workers: int = 1) -> Checked:
    """All validation; raises InputError on the first problem. Writes nothing."""
    check_command_line(getattr(opts, "_flags", None))  # Beam keeps the raw flags only there
    check_options(opts)
    selection = selection_of(opts)
    check_selection(opts, selection)
    check_output_paths(opts)
    api_url = _http_url(opts.roboflow_api_url, "--roboflow_api_url", "https://api.roboflow.com", ROBOFLOW_KEY_ENV)
    supabase_url = opts.supabase_url or os.environ.get(SUPABASE_URL_ENV, "")
    if not supabase_url:
        raise InputError(f"no Supabase URL; pass --supabase_url https://<project-ref>.supabase.co or set "
                         f"{SUPABASE_URL_ENV}")
    supabase_url = _http_url(supabase_url, "--supabase_url", "https://<project-ref>.supabase.co", SUPABASE_KEY_ENV)
    mapping = load_class_mapping(opts.class_mapping)
    rf_ref, rf_key = _secret(opts.roboflow_api_key_secret, "--roboflow_api_key_secret", ROBOFLOW_KEY_ENV,
                             "Roboflow private API key")
    sb_ref, sb_key = _secret(opts.supabase_key_secret, "--supabase_key_secret", SUPABASE_KEY_ENV,
                             "Supabase service_role key")
    check_service_key(sb_key, _key_source(opts.supabase_key_secret, SUPABASE_KEY_ENV))

    rf = RoboflowClient(api_url, rf_key, limiter=AdaptiveRateLimiter(opts.roboflow_rate_limit),
                        retry=PREFLIGHT_RETRY, timeout=20.0, pool_size=2, stall_timeout=opts.roboflow_stall_timeout)
    try:
        info, version_splits, total = check_roboflow(opts, rf, selection)
    finally:
        rf.close()
    classes = info.get("classes") or {}
    unmapped = unmapped_classes(mapping, classes) if opts.plan else ()
    if unmapped:  # --plan reports them with everything else instead of stopping here
        mapping = [*mapping, *(MappingEntry(name, skip=True) for name in unmapped)]
    resolved = resolve_mapping(mapping, classes, info.get("colors") or {})

    sb = SupabaseClient(supabase_url, sb_key, bucket=opts.storage_bucket, retry=PREFLIGHT_RETRY, timeout=20.0,
                        max_connections=4)
    try:
        bucket_exists, limit = check_supabase(opts, sb, supabase_url, sb_key, resolved)
    except httpx.HTTPError as exc:
        raise _supabase_failure(TransientError("connection", str(exc)), supabase_url, "check",
                                _key_source(opts.supabase_key_secret, SUPABASE_KEY_ENV)) from None
    finally:
        sb.close()

    per_worker_rate = opts.roboflow_rate_limit / max(1, workers) if opts.roboflow_rate_limit else None
    concurrency = concurrency_of(opts)
    api_in_flight = opts.concurrency or AUTO_MAX_IN_FLIGHT
    roboflow = RoboflowConfig(api_url, rf_ref, rate_limit=per_worker_rate,
                              pool_size=max(8, api_in_flight + concurrency + 4), max_in_flight=concurrency,
                              max_api_in_flight=api_in_flight, stall_timeout=opts.roboflow_stall_timeout)
    supabase = SupabaseConfig(supabase_url, sb_ref, bucket=opts.storage_bucket,
                              max_connections=max(8, 2 * concurrency + 4), max_in_flight=concurrency)
    return Checked(opts.dataset_id, opts.roboflow_workspace, opts.roboflow_project, opts.roboflow_version,
                   roboflow, supabase, listing_spec(opts, selection, total), info, version_splits, resolved,
                   bucket_exists, int(limit) if limit else None, selection, unmapped,
                   (opts.prune_mode or "delete") if opts.prune else None)


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
            # Read the dataset's classes and match in Python: PostgREST's in.(...) filter loses leading
            # blanks of unquoted values, so a class named " leading" would be created but not found.
            found = [r for r in sb.select("od_classes", "id,name", dataset_id=checked.dataset_id)
                     if r["name"] in checked.mapping.to_create]
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
