"""The end-of-run summary: Beam counters turned into the figures a person checks.

``listed = imported + failed`` is the invariant the importer keeps: every distinct image the listing
found is either in Supabase (written now, or unchanged since an earlier run) or in the dead letters.
The listing itself is reconciled with the total Roboflow reported.
"""

from __future__ import annotations

import json
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.batch_step import NAMESPACE
from transforms.core.redact import redact


def counters_of(result) -> dict[str, int]:
    """Committed counter values of the importer's namespace (attempted where a runner has no commits)."""
    counters: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(value or 0)
    return counters


def _group(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix) and v}


def build_summary(counters: dict[str, int], *, checked, seconds: float, dead_letter_files: list[str]) -> dict:
    listed = counters.get("images_listed", 0)
    written = counters.get("images_written", 0)
    unchanged = counters.get("images_unchanged", 0)
    failed = counters.get("images_failed", 0)
    reported = checked.listing.total
    splits = _group(counters, "split.")
    summary: dict[str, Any] = {
        "dataset_id": checked.dataset_id,
        "roboflow": {"workspace": checked.workspace, "project": checked.project, "version": checked.version},
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
        "splits_imported": splits,
    }
    if checked.version_splits is not None:
        summary["version_splits"] = checked.version_splits
    summary["complete"] = (failed == 0 and summary["missing_from_listing"] == 0
                           and summary["listing_pages_failed"] == 0 and summary["unaccounted"] == 0)
    return summary


def render(summary: dict) -> str:
    """A few lines for a person; the JSON file has everything."""
    ok = "complete" if summary["complete"] else "INCOMPLETE"
    lines = [
        f"Roboflow {summary['roboflow']['workspace']}/{summary['roboflow']['project']} -> dataset "
        f"{summary['dataset_id']}: {ok}",
        f"  listed {summary['listed']} (Roboflow reported {summary['reported_total']}"
        + (f", {summary['missing_from_listing']} missing" if summary["missing_from_listing"] else "") + ")",
        f"  imported {summary['imported']}: new {summary['new']}, changed {summary['changed']}, "
        f"unchanged {summary['unchanged']} (skipped)",
        f"  failed {summary['failed']}" + (f" -> {', '.join(summary['dead_letter_files'])}"
                                          if summary["failed"] else ""),
        f"  annotations {summary['annotations']}, objects uploaded {summary['objects_uploaded']} "
        f"({summary['bytes_uploaded'] / 1e6:.1f} MB), already present {summary['objects_already_present']}",
        f"  {summary['seconds']} s, {summary['images_per_second']} images/s, "
        f"throttled {summary['throttled_seconds']} s",
    ]
    if summary["dead_letters"]:
        lines.append("  dead letters: " + ", ".join(f"{k} {v}" for k, v in summary["dead_letters"].items()))
    if summary["retries"]:
        lines.append("  retries: " + ", ".join(f"{k} {v}" for k, v in summary["retries"].items()))
    if "version_splits" in summary:
        lines.append(f"  splits imported {summary['splits_imported']} vs version "
                     f"{summary['roboflow']['version']} {summary['version_splits']}")
    return redact("\n".join(lines))


def write_summary(path: str, summary: dict) -> None:
    directory = path.rsplit("/", 1)[0] if "/" in path else ""
    if directory and not FileSystems.exists(directory) and "://" not in path:
        FileSystems.mkdirs(directory)
    with FileSystems.create(path) as handle:
        handle.write(redact(json.dumps(summary, indent=2, sort_keys=True)).encode("utf-8"))
