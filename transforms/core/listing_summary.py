"""The search listing's per-image summary, as a fingerprint for ``--change_detection listing``.

Project search returns, 250 images per call, a summary of each image: ``annotations`` (box count and
count per class), ``split``, ``tags``, ``name``, ``labels`` and ``user_metadata``
(/work/shared/reference/roboflow-api.md §2.6). It has no geometry, so a box moved or resized without
changing the class counts leaves the fingerprint unchanged: that edit is seen only by the details
call (``--change_detection exact``, the default). The fingerprint also covers what the import makes
of the summary (the class ids its labels map to, the version, the bucket), so a new class mapping
re-imports the images it affects.

A result without ``annotations`` (the workspace search's documented fields do not include it; what
it returns when asked is inferred, not documented) has no fingerprint: its details are fetched.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transforms.core.records import ImportContext

# Asked of both searches; "filename" is the workspace search's name for "name".
SUMMARY_FIELDS = ("id", "name", "annotations", "labels", "split", "tags", "user_metadata")
SUMMARY_FIELDS_V1 = ("split", "filename", "annotations", "labels", "tags", "user_metadata")
FINGERPRINT_VERSION = 1


def summary_fingerprint(result: dict[str, Any], ctx: ImportContext | None) -> str | None:
    """Hash of one search result's summary and of how this run would map it; None when unknown."""
    annotations = result.get("annotations")
    if ctx is None or not isinstance(annotations, dict) or not isinstance(annotations.get("classes"), dict):
        return None
    classes = {str(k): v for k, v in annotations["classes"].items()}
    labels = result.get("labels") if isinstance(result.get("labels"), list) else []
    canonical = {
        "v": FINGERPRINT_VERSION,
        "count": annotations.get("count"),
        "classes": classes,
        "labels": sorted(map(str, labels)),
        "split": result.get("split"),
        "tags": sorted(map(str, result.get("tags") or [])),
        "name": result.get("name", result.get("filename")),
        "user_metadata": result.get("user_metadata"),
        "mapped": {label: ctx.class_ids.get(label) for label in sorted({*classes, *map(str, labels)})},
        "version": ctx.version,
        "bucket": ctx.bucket,
    }
    blob = json.dumps(canonical, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def summary_split(result: dict[str, Any]) -> str | None:
    split = result.get("split")
    return split if isinstance(split, str) else None
