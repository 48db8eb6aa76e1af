"""``--plan``: what an import would do, found with reads only, before anyone spends hours on it.

After the command-line checks and preflight (which write nothing), the plan

* lists the image ids with the run's listing and filters (a plain loop over the search pages),
* counts images per split and per class with one filtered search each (``total``; no details calls),
* reads this dataset's earlier imports from Supabase (source refs, import hashes, sizes) to tell
  new images from already imported ones, and those no longer in Roboflow (``--prune`` candidates),
* estimates bytes from a small sample of new images (details call + HEAD of the original) and time
  from the Roboflow calls the import makes: listing pages + one details call per image, at the rate,
* names the classes the mapping misses or would create, and the version's splits next to the live ones.

Whether an already imported image changed is only known from its details (the import hash covers
the annotations), so the plan says "already imported" and does not guess "changed".

Exit 0 when the import could run, 2 when it could not (the reasons are printed).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import requests
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import preflight
from pipeline.options import ImportOptions
from transforms.clients.roboflow import RoboflowClient
from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import parse_details
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, AdaptiveRateLimiter
from transforms.core.redact import redact
from transforms.list_images import SPLITS, ListingSpec, Selection, fetch_page, iter_pages, selection_query
from transforms.prune import iter_imported

EXIT_OK, EXIT_INPUT = 0, 2
SAMPLE_SIZE = 8  # new images whose size is measured (one details call + one HEAD each)
# Requests/s assumed without --roboflow_rate_limit and without a latency to go by: the limiter searches for
# Roboflow's limit from a low start, so the time is a guess whose basis the plan prints.
DEFAULT_START_RATE = 200.0


def requested(argv: list[str]) -> bool:
    """Whether the command line asks for a plan (flags checked first: one-line errors, no usage text)."""
    preflight.check_command_line(argv)
    opts = PipelineOptions(argv).view_as(ImportOptions)
    return bool(opts.plan or opts.plan_json)  # --plan_json alone asks for a plan too, never for an import


def run_plan(argv: list[str]) -> int:
    """Print the plan (a table, or JSON with ``--plan_json``); 0 if the import could run, else 2."""
    opts = PipelineOptions(argv).view_as(ImportOptions)
    opts.plan = True  # also when only --plan_json was given
    checked = preflight.check(opts)
    plan = make_plan(checked, opts)
    print(json.dumps(plan, indent=2, sort_keys=True) if opts.plan_json else render_plan(plan))
    return EXIT_OK if plan["can_run"] else EXIT_INPUT


def _search_total(client: RoboflowClient, checked: preflight.Checked, selection: Selection) -> int | None:
    """Roboflow's count of the project's images matching ``selection`` (workspace search, one call)."""
    spec = ListingSpec(checked.workspace, checked.project, 0, mode="token", page_size=1,
                       query=selection_query(selection))
    return fetch_page(client, spec).total


def _and(selection: Selection, term: str) -> Selection:
    return dataclasses.replace(selection, query=" ".join(t for t in (selection.query, term) if t))


def _original_size(client: RoboflowClient, checked: preflight.Checked, image_id: str) -> tuple[int, float]:
    """(bytes of the original, seconds the details call took), without downloading when HEAD tells."""
    started = time.monotonic()
    details = parse_details(client.image_details(checked.workspace, checked.project, image_id))
    latency = time.monotonic() - started
    try:
        head = requests.head(details.original_url, timeout=15, allow_redirects=True)
        length = int(head.headers.get("Content-Length", "")) if head.ok else None
    except (requests.RequestException, ValueError):
        length = None
    if not length:
        length = len(client.download(details.original_url))
    return length, latency


def _sample(ids: list[str], n: int) -> list[str]:
    """Up to ``n`` ids spread evenly over the list (the listing order is by creation time)."""
    if len(ids) <= n:
        return list(ids)
    step = len(ids) / n
    return [ids[int(i * step)] for i in range(n)]


def _class_plan(checked: preflight.Checked, client: SupabaseClient) -> dict[str, Any]:
    existing = {row["name"] for row in client.select("od_classes", "name", dataset_id=checked.dataset_id)}
    mapping = checked.mapping
    return {
        "unmapped": list(checked.unmapped),
        "skipped": sorted(n for n, i in mapping.class_ids.items() if i is None and n not in checked.unmapped),
        "mapped_to_existing": sorted(n for n, i in mapping.class_ids.items() if i),
        "would_create": sorted(n for n in mapping.to_create if n not in existing),
        "reused_by_name": sorted(n for n in mapping.to_create if n in existing),
    }


def make_plan(checked: preflight.Checked, opts: ImportOptions, sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
    rf = RoboflowClient(checked.roboflow.api_url, checked.roboflow.api_key.resolve(),
                        limiter=AdaptiveRateLimiter(opts.roboflow_rate_limit), retry=preflight.PREFLIGHT_RETRY,
                        timeout=30.0, pool_size=2)
    sb = SupabaseClient(checked.supabase.url, checked.supabase.service_key.resolve(), bucket=checked.supabase.bucket,
                        retry=preflight.PREFLIGHT_RETRY, timeout=30.0, max_connections=2)
    try:
        listed: dict[str, None] = {}
        pages = 0
        for page in iter_pages(rf, checked.listing):
            pages += 1
            listed.update(dict.fromkeys(page.ids))
        selection = checked.selection
        splits = {s: _search_total(rf, checked, _and(selection, f"split:{s}")) for s in SPLITS}
        classes = {c: _search_total(rf, checked, _and(selection, selection_query(Selection(class_name=c))))
                   for c in sorted(checked.project_info.get("classes") or {})}
        imported = {image.roboflow_id: image for image in iter_imported(sb, checked.dataset_id, checked.workspace,
                                                                          checked.project)}
        class_plan = _class_plan(checked, sb)
        new = [i for i in listed if i not in imported]
        sizes, latencies = [], []
        for image_id in _sample(new, sample_size):
            size, latency = _original_size(rf, checked, image_id)
            sizes.append(size)
            latencies.append(latency)
    finally:
        rf.close()
        sb.close()

    done = [i for i in listed if i in imported and imported[i].import_hash]
    interrupted = [i for i in listed if i in imported and not imported[i].import_hash]
    gone = [image for i, image in imported.items() if i not in listed]
    mean_size = sum(sizes) / len(sizes) if sizes else 0
    calls = pages + len(listed)  # listing pages, then one details call per image (unchanged ones too)
    latency = sum(latencies) / len(latencies) if latencies else None
    if opts.roboflow_rate_limit:
        rate, rate_basis = opts.roboflow_rate_limit, "--roboflow_rate_limit"
    elif latency:
        in_flight = opts.concurrency or AUTO_MAX_IN_FLIGHT
        rate = min(DEFAULT_START_RATE, in_flight / latency)
        rate_basis = (f"no --roboflow_rate_limit: {in_flight} calls in flight / measured details latency "
                      f"{latency:.3f} s, at most {DEFAULT_START_RATE:g}/s; Roboflow's own limit may be lower")
    else:
        rate = DEFAULT_START_RATE
        rate_basis = f"no --roboflow_rate_limit: assumed {DEFAULT_START_RATE:g}/s; Roboflow's own limit may be lower"
    reasons = []
    if checked.unmapped:
        reasons.append(f"Roboflow classes with no class mapping entry: {', '.join(map(repr, checked.unmapped))}; "
                       "add an entry for each (target_class_id, create_new or skip) or use --class_mapping auto")
    live_splits = {s: int(n) for s, n in (checked.project_info.get("splits") or {}).items()}
    return {
        "roboflow": {"workspace": checked.workspace, "project": checked.project, "version": checked.version},
        "dataset_id": checked.dataset_id,
        "filters": {k: v for k, v in dataclasses.asdict(selection).items() if v},
        "listing": {"mode": checked.listing.mode, "reported_total": checked.listing.total, "listed": len(listed),
                    "pages": pages},
        "splits": splits,
        "classes": classes,
        "project_splits": live_splits,
        "version_splits": checked.version_splits,
        "project_images": checked.project_info.get("images"),
        "already_imported": len(done),
        "interrupted_earlier": len(interrupted),
        "new": len(new),
        "not_in_roboflow": len(gone),
        "bytes": {
            "already_imported": sum(imported[i].size_bytes or 0 for i in done),
            "to_upload_estimate": round(mean_size * (len(new) + len(interrupted))),
            "sample_images": len(sizes),
            "sample_mean": round(mean_size),
        },
        "time": {
            "roboflow_calls": calls,
            "rate_per_s": round(rate, 2),
            "rate_basis": rate_basis,
            "seconds_estimate": round(calls / rate, 1) if rate else None,
        },
        "class_mapping": class_plan,
        "bucket": {"name": checked.supabase.bucket, "exists": checked.bucket_exists},
        "prune": bool(opts.prune),
        "can_run": not reasons,
        "reasons": reasons,
    }


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def render_plan(plan: dict[str, Any]) -> str:
    rf = plan["roboflow"]
    version = f" version {rf['version']}" if rf["version"] is not None else ""
    filters = " ".join(f"--{k} {v!r}" for k, v in plan["filters"].items()) or "none (whole project)"
    listing = plan["listing"]
    lines = [
        f"PLAN (nothing written): Roboflow {rf['workspace']}/{rf['project']}{version} -> dataset {plan['dataset_id']}",
        f"  filters            {filters}",
        f"  images             {listing['listed']:,} listed ({listing['mode']} listing, {listing['pages']} pages; "
        f"Roboflow reports {listing['reported_total']:,})",
        f"    new              {plan['new']:,}",
        f"    already imported {plan['already_imported']:,}  (one details call each tells whether it changed; "
        "unchanged ones are skipped)",
    ]
    if plan["interrupted_earlier"]:
        lines.append(f"    interrupted      {plan['interrupted_earlier']:,}  (an earlier run stopped mid-image: "
                     "redone)")
    if not plan["filters"]:
        action = "would be pruned" if plan["prune"] else "kept; --prune removes them"
        lines.append(f"  not in Roboflow    {plan['not_in_roboflow']:,}  (imported earlier, no longer listed: "
                     f"{action})")
    split_cells = "  ".join(f"{s} {n:,}" if n is not None else f"{s} ?" for s, n in plan["splits"].items())
    lines.append(f"  per split          {split_cells}")
    live = "  ".join(f"{s} {n:,}" for s, n in plan["project_splits"].items())
    lines.append(f"    project now      {live}  ({plan['project_images'] or 0:,} images, unfiltered)")
    if plan["version_splits"] is not None:
        versioned = "  ".join(f"{s} {n:,}" for s, n in plan["version_splits"].items())
        lines.append(f"    version {rf['version']:<8} {versioned}  (the stream imports the current images)")
    lines.append("  per class          images with at least one box:")
    width = max((len(c) for c in plan["classes"]), default=0)
    for name, n in plan["classes"].items():
        lines.append(f"    {name:<{width}}  {n if n is not None else '?':>7}")
    size, timing = plan["bytes"], plan["time"]
    lines += [
        f"  bytes to upload    ~{_size(size['to_upload_estimate'])}  (mean {_size(size['sample_mean'])} of "
        f"{size['sample_images']} sampled new images; already stored {_size(size['already_imported'])})",
        f"  time               ~{_duration(timing['seconds_estimate'])}  ({timing['roboflow_calls']:,} Roboflow calls "
        f"at {timing['rate_per_s']:g}/s; {timing['rate_basis']}; pipeline start-up comes on top)",
    ]
    mapping = plan["class_mapping"]
    for label, key in (("unmapped classes", "unmapped"), ("classes to create", "would_create"),
                       ("reused by name", "reused_by_name"), ("mapped to ids", "mapped_to_existing"),
                       ("skipped classes", "skipped")):
        if mapping[key]:
            lines.append(f"  {label:<18} {', '.join(mapping[key])}")
    bucket = plan["bucket"]
    if not bucket["exists"]:
        lines.append(f"  bucket             {bucket['name']} would be created (--create_bucket)")
    if plan["can_run"]:
        lines.append("  verdict            the import can run (exit 0)")
    else:
        lines += ["  verdict            the import cannot run (exit 2):", *(f"    - {r}" for r in plan["reasons"])]
    return redact("\n".join(lines))
