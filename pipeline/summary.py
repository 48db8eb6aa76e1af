"""The end-of-run summary: Beam counters turned into the figures a person checks.

``listed = imported + failed`` is the invariant the importer keeps: every distinct image the listing
found is either in Supabase (written now, or unchanged since an earlier run) or in the dead letters.
The listing itself is reconciled with the total Roboflow reported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.batch_step import NAMESPACE
from transforms.clients.roboflow import ACCOUNT_REFUSALS
from transforms.core.redact import redact
from transforms.dead_letters import read_dead_letter_files


def counters_of(result) -> dict[str, int]:
    """Committed counter values of the importer's namespace (attempted where a runner has no commits)."""
    counters: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(value or 0)
    return counters


def _group(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix) and v}


def letters_by_error(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Dead letters grouped by error type: how many, at which steps, and one example message."""
    groups: dict[str, dict[str, Any]] = {}
    for letter in read_dead_letter_files(paths):
        group = groups.setdefault(letter.error_type, {"count": 0, "steps": [], "example": letter.message[:200]})
        group["count"] += 1
        if letter.step not in group["steps"]:
            group["steps"].append(letter.step)
    return dict(sorted(groups.items(), key=lambda kv: (-kv[1]["count"], kv[0])))


def prune_outcome(counters: dict[str, int], mode: str | None) -> dict[str, Any] | None:
    """What ``--prune`` did; ``None`` when it was not asked for."""
    if mode is None:
        return None
    outcome = {
        "mode": mode,
        "pruned": counters.get("images_pruned", 0),
        "marked": counters.get("images_marked", 0),
        "unmarked": counters.get("images_unmarked", 0),
        "objects_removed": counters.get("objects_removed", 0),
        "bytes_removed": counters.get("bytes_removed", 0),
        "skipped": counters.get("prune_skipped", 0),
        "failed": counters.get("prune_failed", 0),
    }
    if outcome["skipped"]:
        outcome["note"] = ("not pruned: the listing was incomplete (lost pages or fewer images than Roboflow "
                           "reported) or empty, so missing images cannot be told from unlisted ones; run again")
    return outcome


def stop_outcome(counters: dict[str, int], not_imported: int) -> dict[str, Any] | None:
    """Why Roboflow stopped the run (402/423/403 during it), or None when it did not."""
    statuses = sorted(int(s) for s in _group(counters, "roboflow_stopped."))
    if not statuses:
        return None
    kind, fix = ACCOUNT_REFUSALS[statuses[0]]
    return {"status": statuses[0], "reason": kind, "fix": fix, "not_imported": not_imported}


def stop_line(summary: dict) -> str | None:
    """The one line a stopped run prints on stderr."""
    stopped = summary.get("stopped")
    if not stopped:
        return None
    return (f"Roboflow answered {stopped['status']} ({stopped['reason']}) during the import, so it stopped: "
            f"{stopped['not_imported']:,} images not imported (in the dead letters, most as not_attempted); "
            f"{stopped['fix']}, then run the same command again")




def details_outcome(counters: dict[str, int], run: dict[str, Any] | None) -> dict[str, Any]:
    """Roboflow details calls made and saved, and why each image without one was skipped."""
    skipped = _group(counters, "details_skipped.")
    outcome: dict[str, Any] = {
        "calls": counters.get("roboflow.calls.image_details", 0),  # HTTP requests, retries included
        "fetched": counters.get("details_fetched", 0),
        "saved": sum(skipped.values()),
        "skipped": skipped,
        "notes": [],
    }
    if counters.get("details_lookup_failed"):
        outcome["notes"].append(f"{counters['details_lookup_failed']} batches could not read their stored links "
                                "and fetched every details")
    if run and run.get("resumed"):
        outcome["notes"].append("resumed an interrupted run: the images it had written were not fetched again; any "
                                "changed in Roboflow since are picked up by the next full sync")
    if counters.get("listing_summary_unknown"):
        outcome["notes"].append(f"{counters['listing_summary_unknown']:,} listed images came without a class-count "
                                "summary (the workspace search of --roboflow_listing token, --split or --query has "
                                "none) and had their details fetched")
    if run and run.get("change_detection") == "listing":
        outcome["notes"].append("--change_detection listing: images whose listing summary (class counts, split, "
                                "tags, name, metadata) is unchanged were not fetched; a box moved or resized without "
                                "changing the class counts is only seen by a --change_detection exact sync")
    return outcome


def build_summary(counters: dict[str, int], *, checked, seconds: float, dead_letter_files: list[str],
                  run: dict[str, Any] | None = None) -> dict:
    listed = counters.get("images_listed", 0)
    written = counters.get("images_written", 0)
    unchanged = counters.get("images_unchanged", 0)
    failed = counters.get("images_failed", 0)
    reported = checked.listing.total
    splits = _group(counters, "split.")
    prune = prune_outcome(counters, getattr(checked, "prune", None))
    summary: dict[str, Any] = {
        "dataset_id": checked.dataset_id,
        "roboflow": {"workspace": checked.workspace, "project": checked.project, "version": checked.version},
        "project_type": kind.describe() if (kind := getattr(checked, "project_type", None)) else None,
        "target": kind.tables.kind if kind else "od",  # od_* or cls_* tables
        "listed": listed,
        "reported_total": reported,
        "missing_from_listing": max(0, reported - listed),
        "listing_pages_failed": counters.get("list_pages_failed", 0),
        "imported": written + unchanged,
        "new": counters.get("images_new", 0),
        "changed": counters.get("images_changed", 0),
        "unchanged": unchanged,
        "failed": failed,
        "unaccounted": listed - (written + unchanged + failed),
        "annotations": counters.get("annotations_written", 0),
        "keypoints": counters.get("keypoints_written", 0),
        # Of the imported images: labelled as holding nothing (status annotated) vs never labelled (pending).
        "null_images": counters.get("label_state.null", 0),
        "unannotated_images": counters.get("label_state.unannotated", 0),
        "annotations_dropped": _group(counters, "annotations_dropped."),
        "objects_uploaded": counters.get("objects_uploaded", 0),
        "objects_already_present": counters.get("objects_exists", 0),
        "bytes_uploaded": counters.get("bytes_uploaded", 0),
        "bytes_downloaded": counters.get("bytes_downloaded", 0),
        "seconds": round(seconds, 2),
        "images_per_second": round((written + unchanged) / seconds, 2) if seconds > 0 else None,
        "roboflow_api_calls": _group(counters, "roboflow.calls."),
        "retries": _group(counters, "retry."),
        "throttled_seconds": round(counters.get("throttled_ms", 0) / 1000, 1),
        "dead_letters": _group(counters, "dead_letter."),
        "dead_letter_files": dead_letter_files,
        "dead_letters_by_error": letters_by_error(dead_letter_files),
        "filters": {k: v for k, v in dataclasses.asdict(checked.selection).items() if v}
        if getattr(checked, "selection", None) is not None else {},
        "pruned": (prune["pruned"] + prune["marked"]) if prune else 0,
        "prune": prune,
        "splits_imported": splits,
        "details": details_outcome(counters, run),
        "run": run,
    }
    if checked.version_splits is not None:
        summary["version_splits"] = checked.version_splits
    summary["stopped"] = stop_outcome(counters, max(0, reported - written - unchanged))
    summary["complete"] = (summary["stopped"] is None and failed == 0 and summary["missing_from_listing"] == 0
                           and summary["listing_pages_failed"] == 0 and summary["unaccounted"] == 0
                           and not (prune and prune["failed"]))
    return summary


REASONS = {"resumed": "written by the interrupted run", "unchanged_summary": "listing summary unchanged"}


def _row(label: str, value: Any, note: str = "") -> str:
    text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"  {label:<22}{text:>12}" + (f"   {note}" if note else "")


def rate_limit_note(summary: dict) -> str:
    """The throttled time in words: it is summed over the requests that waited, so it can exceed the run."""
    waiting = summary["throttled_seconds"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    return (f"summed over every request held back by the Roboflow rate limit: on average {waiting:,.1f} "
            "requests were waiting at any moment of the run")


def render(summary: dict) -> str:
    """A table for a person; the JSON file has the same figures and more."""
    ok = "complete" if summary["complete"] else "INCOMPLETE"
    rf = summary["roboflow"]
    filters = " ".join(f"--{k} {v!r}" for k, v in summary.get("filters", {}).items()) or "none (whole project)"
    missing = summary["missing_from_listing"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in summary["annotations_dropped"].items())
    stopped = summary.get("stopped")
    if stopped:
        ok = f"STOPPED (Roboflow {stopped['status']} {stopped['reason']})"
    lines = [
        f"Roboflow {rf['workspace']}/{rf['project']} -> dataset {summary['dataset_id']}: {ok}",
        f"  {'filters':<22}{filters}",
        *([f"  {'project type':<22}{summary['project_type']}"] if summary.get("project_type") else []),
        _row("listed", summary["listed"], f"Roboflow reported {summary['reported_total']:,}"
             + (f", {missing:,} missing from the listing" if missing else "")
             + (f", {summary['listing_pages_failed']} listing pages lost" if summary["listing_pages_failed"] else "")),
        _row("imported", summary["imported"]),
        _row("  new", summary["new"]),
        _row("  changed", summary["changed"], "rows rewritten, stored object kept"),
        _row("  unchanged", summary["unchanged"], "skipped: nothing downloaded or written"),
    ]
    prune = summary.get("prune")
    if prune is not None:
        done = ("marked source_missing_at" if prune["mode"] == "mark"
                else f"objects removed {prune['objects_removed']:,}")
        note = f"--prune {prune['mode']}: {done}" + (f", {prune['unmarked']:,} unmarked" if prune["unmarked"] else "")
        if prune["skipped"]:
            note = f"--prune skipped for {prune['skipped']:,} images: listing incomplete"
        if prune["failed"]:
            note += f"; {prune['failed']:,} failed (see the log)"
        lines.append(_row("pruned", summary["pruned"], note))
    lines += [
        _row("failed", summary["failed"], "in the dead letters" if summary["failed"] else ""),
        _row("class labels" if summary.get("target") == "cls" else "annotations", summary["annotations"],
             f"dropped: {dropped}" if dropped else ""),
    ]
    if summary.get("keypoints"):
        lines.append(_row("  keypoints", summary["keypoints"], "normalised, in attributes.keypoints"))
    lines += [
        _row("null images", summary.get("null_images", 0),
             "labelled with no class: status pending" if summary.get("target") == "cls"
             else "labelled as holding nothing: status annotated"),
        _row("unannotated", summary.get("unannotated_images", 0), "never labelled in Roboflow: status pending"),
        _row("objects uploaded", summary["objects_uploaded"],
             f"{summary['bytes_uploaded'] / 1e6:,.1f} MB; already present {summary['objects_already_present']:,}"),
        _row("time", f"{summary['seconds']:,.1f} s", f"{summary['images_per_second'] or 0:,.1f} images/s"),
    ]
    if summary["throttled_seconds"]:
        lines.append(_row("rate-limit waits", f"{summary['throttled_seconds']:,.1f} s", rate_limit_note(summary)))
    details = summary.get("details")
    if details is not None:
        why = ", ".join(f"{REASONS.get(k, k)} {v:,}" for k, v in details["skipped"].items())
        lines.append(_row("details calls", details["calls"], f"saved {details['saved']:,}"
                          + (f" ({why})" if why else "")))
        lines += [f"    {note}" for note in details["notes"]]
    run = summary.get("run")
    if run:
        name = f" ({run['name']})" if run.get("name") else ""
        state = f"resumed, attempt {run['attempt']}" if run.get("resumed") else "new"
        lines.append(f"  {'run':<22}{run['id']}{name}: {state}, --change_detection {run['change_detection']}")
    groups = summary.get("dead_letters_by_error") or {}
    if groups:
        lines.append("  dead letters by error type:")
        width = max(len(k) for k in groups)
        for error_type, group in groups.items():
            lines.append(f"    {error_type:<{width}}  {group['count']:>8,}   at {', '.join(group['steps'])}; "
                         f"e.g. {group['example'][:100]}")
        lines.append("    files: " + ", ".join(summary["dead_letter_files"]))
    if summary["retries"]:
        lines.append("  retries: " + ", ".join(f"{k} {v:,}" for k, v in summary["retries"].items()))
    if "version_splits" in summary:
        lines.append(f"  splits imported {summary['splits_imported']} vs version {rf['version']} "
                     f"{summary['version_splits']}")
    return redact("\n".join(lines))


def write_summary(path: str, summary: dict) -> None:
    directory = path.rsplit("/", 1)[0] if "/" in path else ""
    if directory and not FileSystems.exists(directory) and "://" not in path:
        FileSystems.mkdirs(directory)
    with FileSystems.create(path) as handle:
        handle.write(redact(json.dumps(summary, indent=2, sort_keys=True)).encode("utf-8"))
