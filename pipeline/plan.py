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
the annotations), so the plan says "already imported" and does not guess "changed". It does count,
for both ``--change_detection`` modes, the details calls the sync would make: ``exact`` one per
listed image, ``listing`` one per new image or image whose listing summary differs from the stored
one; images written by an interrupted run of the same key (pipeline/runs.py) need none in either.

Exit 0 when the import could run, 2 when it could not (the reasons are printed).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import requests

from pipeline import preflight, runs
from pipeline.options import ImportOptions, ParsedOptions
from pipeline.remote_checks import PREFLIGHT_RETRY
from transforms.clients.imported import iter_imported
from transforms.clients.listing import (
    SPLITS,
    ListingSpec,
    Selection,
    agreed,
    fetch_page,
    iter_pages,
    listed_images,
    selection_query,
)
from transforms.clients.roboflow import RoboflowClient
from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import ImageDataError, mime_allowed, parse_details, sniff_image
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, AdaptiveRateLimiter
from transforms.core.records import ImportContext, ListedImage
from transforms.core.redact import redact

EXIT_OK, EXIT_INPUT = 0, 2
SAMPLE_SIZE = 8  # new images whose size is measured (one details call + one HEAD each)
# Requests/s assumed without --roboflow_rate_limit and without a latency to go by: the limiter searches for
# Roboflow's limit from a low start, so the time is a guess whose basis the plan prints.
DEFAULT_START_RATE = 200.0


def requested(options: ParsedOptions) -> bool:
    """Whether the options ask for a plan: ``--plan_json`` alone asks for one too, never for an import."""
    opts = options.importer
    return bool(opts.plan or opts.plan_json)


def run_plan(options: ParsedOptions) -> int:
    """Print the plan (a table, or JSON with ``--plan_json``); 0 if the import could run, else 2."""
    opts = options.importer
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


def _original_size(client: RoboflowClient, checked: preflight.Checked,
                   image_id: str) -> tuple[int, float, str | None]:
    """(bytes of the original, seconds the details call took, its type when the bucket restricts types).

    Without a type restriction a HEAD tells the size; with one the original is downloaded and its
    type sniffed from the bytes, as the import does (the CDN names every original ``.jpg``)."""
    started = time.monotonic()
    details = parse_details(client.image_details(checked.workspace, checked.project, image_id))
    latency = time.monotonic() - started
    if checked.allowed_mime_types:
        data = client.download(details.original_url)
        try:
            mime = sniff_image(data).mime_type
        except ImageDataError:
            mime = None  # dead-lettered as undecodable by the import, not refused by the bucket
        return len(data), latency, mime
    try:
        head = requests.head(details.original_url, timeout=15, allow_redirects=True)
        length = int(head.headers.get("Content-Length", "")) if head.ok else None
    except (requests.RequestException, ValueError):
        length = None
    if not length:
        length = len(client.download(details.original_url))
    return length, latency, None


def bucket_refusals(checked: preflight.Checked, sampled: list[tuple[int, str | None]], new: int) -> dict[str, Any]:
    """How many of the sampled new originals the bucket would refuse (type or size), scaled to all new ones."""
    types = sorted({m for _, m in sampled if m and not mime_allowed(m, checked.allowed_mime_types)})
    refused = sum(1 for size, mime in sampled
                  if (checked.max_object_bytes is not None and size > checked.max_object_bytes)
                  or (mime and not mime_allowed(mime, checked.allowed_mime_types)))
    return {
        "allowed_mime_types": list(checked.allowed_mime_types or ()),
        "file_size_limit": checked.max_object_bytes,
        "sampled": len(sampled),
        "refused_in_sample": refused,
        "refused_types": types,
        "refused_estimate": round(new * refused / len(sampled)) if sampled else 0,
    }


def _sample(ids: list[str], n: int) -> list[str]:
    """Up to ``n`` ids spread evenly over the list (the listing order is by creation time)."""
    if len(ids) <= n:
        return list(ids)
    step = len(ids) / n
    return [ids[int(i * step)] for i in range(n)]


def _class_plan(checked: preflight.Checked, existing: dict[str, str]) -> dict[str, Any]:
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
                        limiter=AdaptiveRateLimiter(opts.roboflow_rate_limit), retry=PREFLIGHT_RETRY,
                        timeout=30.0, pool_size=2)
    sb = SupabaseClient(checked.supabase.url, checked.supabase.service_key.resolve(), bucket=checked.supabase.bucket,
                        retry=PREFLIGHT_RETRY, timeout=30.0, max_connections=2)
    try:
        existing = {row["name"]: row["id"]
                    for row in sb.select(checked.tables.classes, "id,name", dataset_id=checked.dataset_id)}
        context = plan_context(checked, existing)
        listed: dict[str, ListedImage] = {}
        pages = 0
        for page in iter_pages(rf, checked.listing):
            pages += 1
            for image in listed_images(page, context):
                seen = listed.get(image.image_id)
                listed[image.image_id] = image if seen is None else agreed([seen, image])
        selection = checked.selection
        splits = {s: _search_total(rf, checked, _and(selection, f"split:{s}")) for s in SPLITS}
        classes = {c: _search_total(rf, checked, _and(selection, selection_query(Selection(class_name=c))))
                   for c in sorted(checked.project_info.get("classes") or {})}
        imported = {image.roboflow_id: image for image in iter_imported(sb, checked.dataset_id, checked.workspace,
                                                                          checked.project, with_sync=True,
                                                                          tables=checked.tables)}
        open_run = runs.open_run_of(sb, checked.dataset_id, runs.source_of(checked.workspace, checked.project),
                                    runs.scope_of(selection))
        class_plan = _class_plan(checked, existing)
        new = [i for i in listed if i not in imported]
        sizes, latencies, sampled = [], [], []
        for image_id in _sample(new, sample_size):
            size, latency, mime = _original_size(rf, checked, image_id)
            sizes.append(size)
            latencies.append(latency)
            sampled.append((size, mime))
    finally:
        rf.close()
        sb.close()

    done = [i for i in listed if i in imported and imported[i].import_hash]
    interrupted = [i for i in listed if i in imported and not imported[i].import_hash]
    gone = [image for i, image in imported.items() if i not in listed]
    mean_size = sum(sizes) / len(sizes) if sizes else 0
    sync = sync_plan(listed, imported, open_run, pages)
    calls = sync[opts.change_detection]["roboflow_calls"]
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
        "project_type": checked.project_type.describe() if checked.project_type else None,
        "target": checked.tables.kind,
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
        "change_detection": {
            "chosen": opts.change_detection,
            **{mode: sync[mode] | {"seconds_estimate": round(sync[mode]["roboflow_calls"] / rate, 1) if rate else None}
               for mode in ("exact", "listing")},
        },
        "resume": sync["resume"],
        "class_mapping": class_plan,
        "bucket": {"name": checked.supabase.bucket, "exists": checked.bucket_exists,
                   **bucket_refusals(checked, sampled, len(new) + len(interrupted))},
        "prune": bool(opts.prune),
        "can_run": not reasons,
        "reasons": reasons,
    }


def plan_context(checked: preflight.Checked, existing: dict[str, str]) -> ImportContext:
    """The import's context as far as a plan knows it: classes to be created by name have no id yet."""
    class_ids = dict(checked.mapping.class_ids) | {n: existing.get(n) for n in checked.mapping.to_create}
    return ImportContext(checked.dataset_id, checked.workspace, checked.project, checked.version,
                         checked.supabase.bucket, class_ids, tables=checked.tables)


def sync_plan(listed: dict[str, ListedImage], imported: dict[str, Any], open_run: dict[str, Any] | None,
              pages: int) -> dict[str, Any]:
    """Details calls the import would make in each ``--change_detection`` mode, and what a resume saves."""
    done = {i: imported[i] for i in listed if i in imported and imported[i].import_hash}
    resumed = {i for i, image in done.items() if open_run is not None and image.run_id == open_run["id"]}
    unchanged = {i for i, image in done.items() if i not in resumed and listed[i].fingerprint
                 and image.listing_fingerprint == listed[i].fingerprint}
    exact = len(listed) - len(resumed)
    listing = exact - len(unchanged)
    return {
        "exact": {"details_calls": exact, "roboflow_calls": pages + exact},
        "listing": {"details_calls": listing, "roboflow_calls": pages + listing,
                    "unchanged_summary": len(unchanged)},
        "resume": {"run_id": open_run["id"], "run_name": open_run.get("run_name"),
                   "attempts": open_run.get("attempts"), "written": len(resumed)} if open_run else None,
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
        *([f"  project type       {plan['project_type']}"] if plan.get("project_type") else []),
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
    lines.append("  per class          images with at least one "
                 + ("label:" if plan.get("target") == "cls" else "box:"))
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
    modes = plan["change_detection"]
    exact, listing = modes["exact"], modes["listing"]
    lines.append(f"  details calls      exact {exact['details_calls']:,} (~{_duration(exact['seconds_estimate'])}); "
                 f"listing {listing['details_calls']:,} (~{_duration(listing['seconds_estimate'])}, "
                 f"{listing['unchanged_summary']:,} unchanged listing summaries)  [--change_detection "
                 f"{modes['chosen']}]")
    resume = plan["resume"]
    if resume:
        name = f" ({resume['run_name']})" if resume["run_name"] else ""
        lines.append(f"  resumes run        {resume['run_id']}{name}, which did not finish: the {resume['written']:,} "
                     "images it wrote need no details call")
    mapping = plan["class_mapping"]
    for label, key in (("unmapped classes", "unmapped"), ("classes to create", "would_create"),
                       ("reused by name", "reused_by_name"), ("mapped to ids", "mapped_to_existing"),
                       ("skipped classes", "skipped")):
        if mapping[key]:
            lines.append(f"  {label:<18} {', '.join(mapping[key])}")
    bucket = plan["bucket"]
    if not bucket["exists"]:
        lines.append(f"  bucket             {bucket['name']} would be created (--create_bucket)")
    elif bucket["refused_in_sample"]:
        limits = [f"types {', '.join(bucket['allowed_mime_types'])}" if bucket["allowed_mime_types"] else "",
                  f"files up to {_size(bucket['file_size_limit'])}" if bucket["file_size_limit"] else ""]
        types = f": {', '.join(bucket['refused_types'])}" if bucket["refused_types"] else ""
        lines.append(f"  bucket refuses     ~{bucket['refused_estimate']:,} images ({bucket['refused_in_sample']} of "
                     f"{bucket['sampled']} sampled{types}; {bucket['name']} takes "
                     f"{' and '.join(x for x in limits if x)}): they would go to the dead "
                     "letters; widen the bucket first, or --retry_dead_letters after")
    if plan["can_run"]:
        lines.append("  verdict            the import can run (exit 0)")
    else:
        lines += ["  verdict            the import cannot run (exit 2):", *(f"    - {r}" for r in plan["reasons"])]
    return redact("\n".join(lines))
