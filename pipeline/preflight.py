"""Everything checked before the first write, in one call: :func:`check` returns a :class:`Checked`.

It takes the options parsed once (the command line was checked then: pipeline/validation.py) and
runs the checks that need no network first (pipeline/validation.py: options, filters, output
paths, secrets present), then the remote ones (pipeline/remote_checks.py: the Roboflow project and
version, the Supabase target: reachable, service key, schema, dataset, classes, bucket), and
raises :class:`InputError` with one line naming the fix. It writes nothing: the first writes
(bucket, classes) and the counters after the run are pipeline/target.py's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import httpx

from pipeline.class_mapping import MappingEntry, ResolvedMapping, load_class_mapping, resolve_mapping
from pipeline.environment import ROBOFLOW_KEY_ENV, SUPABASE_KEY_ENV, SUPABASE_URL_ENV
from pipeline.errors import InputError
from pipeline.options import ImportOptions, concurrency_of
from pipeline.project_types import ProjectType, project_type
from pipeline.remote_checks import (
    PREFLIGHT_READS,
    PREFLIGHT_RETRY,
    check_roboflow,
    check_supabase,
    key_source_of,
    supabase_failure,
)
from pipeline.validation import (
    check_options,
    check_output_paths,
    check_selection,
    check_service_key,
    http_url,
    listing_spec,
    secret_of,
    selection_of,
    unmapped_classes,
)
from transforms.clients.listing import ListingSpec, Selection
from transforms.clients.resources import RoboflowConfig, SupabaseConfig
from transforms.clients.roboflow import RoboflowClient
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, AdaptiveRateLimiter, start_rate
from transforms.core.retry import TransientError
from transforms.core.tables import OD, PlatformTables


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    project_type: ProjectType | None = None
    skeletons: dict[str, dict] | None = None  # keypoint projects: class -> names and edges
    allowed_mime_types: tuple[str, ...] | None = None  # the bucket's; None: any type

    @property
    def tables(self) -> PlatformTables:
        return self.project_type.tables if self.project_type else OD


def check(opts: ImportOptions, workers: int = 1) -> Checked:
    """All validation; raises InputError on the first problem. Writes nothing."""
    check_options(opts)
    selection = selection_of(opts)
    check_selection(opts, selection)
    check_output_paths(opts)
    api_url = http_url(opts.roboflow_api_url, "--roboflow_api_url", "https://api.roboflow.com", ROBOFLOW_KEY_ENV)
    supabase_url = opts.supabase_url or os.environ.get(SUPABASE_URL_ENV, "")
    if not supabase_url:
        raise InputError(f"no Supabase URL; pass --supabase_url https://<project-ref>.supabase.co or set "
                         f"{SUPABASE_URL_ENV}")
    supabase_url = http_url(supabase_url, "--supabase_url", "https://<project-ref>.supabase.co", SUPABASE_KEY_ENV)
    mapping = load_class_mapping(opts.class_mapping)
    rf_ref, rf_key = secret_of(opts.roboflow_api_key_secret, "--roboflow_api_key_secret", ROBOFLOW_KEY_ENV,
                               "Roboflow private API key")
    sb_ref, sb_key = secret_of(opts.supabase_key_secret, "--supabase_key_secret", SUPABASE_KEY_ENV,
                               "Supabase service_role key")
    check_service_key(sb_key, key_source_of(opts.supabase_key_secret, SUPABASE_KEY_ENV))

    rf = RoboflowClient(api_url, rf_key, limiter=AdaptiveRateLimiter(opts.roboflow_rate_limit),
                        retry=PREFLIGHT_RETRY, timeout=20.0, pool_size=PREFLIGHT_READS,
                        stall_timeout=opts.roboflow_stall_timeout)
    try:
        info, version_splits, total, skeletons = check_roboflow(opts, rf, selection)
    finally:
        rf.close()
    classes = info.get("classes") or {}
    unmapped = unmapped_classes(mapping, classes) if opts.plan else ()
    if unmapped:  # --plan reports them with everything else instead of stopping here
        mapping = [*mapping, *(MappingEntry(name, skip=True) for name in unmapped)]
    resolved = resolve_mapping(mapping, classes, info.get("colors") or {})

    kind = project_type(info, opts.roboflow_workspace, opts.roboflow_project)
    bucket = opts.storage_bucket or kind.tables.default_bucket
    sb = SupabaseClient(supabase_url, sb_key, bucket=bucket, retry=PREFLIGHT_RETRY, timeout=20.0,
                        max_connections=4)
    try:
        bucket_exists, limit, allowed_types = check_supabase(opts, sb, supabase_url, sb_key, resolved, kind)
        bucket_public = bool(bucket_exists and sb.bucket_public)  # --create_bucket creates it private
    except httpx.HTTPError as exc:
        raise supabase_failure(TransientError("connection", str(exc)), supabase_url, "check",
                               key_source_of(opts.supabase_key_secret, SUPABASE_KEY_ENV)) from None
    finally:
        sb.close()

    per_worker_rate = opts.roboflow_rate_limit / max(1, workers) if opts.roboflow_rate_limit else None
    concurrency = concurrency_of(opts)
    api_in_flight = opts.concurrency or AUTO_MAX_IN_FLIGHT
    roboflow = RoboflowConfig(api_url, rf_ref, rate_limit=per_worker_rate, job_rate_limit=opts.roboflow_rate_limit,
                              start_rate=start_rate(workers),
                              pool_size=max(8, api_in_flight + concurrency + 4), max_in_flight=concurrency,
                              max_api_in_flight=api_in_flight, stall_timeout=opts.roboflow_stall_timeout)
    supabase = SupabaseConfig(supabase_url, sb_ref, bucket=bucket, bucket_public=bucket_public,
                              max_connections=max(8, 2 * concurrency + 4), max_in_flight=concurrency)
    return Checked(
        dataset_id=opts.dataset_id, workspace=opts.roboflow_workspace, project=opts.roboflow_project,
        version=opts.roboflow_version, roboflow=roboflow, supabase=supabase,
        listing=listing_spec(opts, selection, total), project_info=info, version_splits=version_splits,
        mapping=resolved, bucket_exists=bucket_exists, max_object_bytes=limit, selection=selection,
        unmapped=unmapped, prune=(opts.prune_mode or "delete") if opts.prune else None, project_type=kind,
        skeletons=skeletons, allowed_mime_types=allowed_types)
