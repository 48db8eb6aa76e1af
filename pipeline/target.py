"""The target writes before and after the pipeline: the bucket (``--create_bucket``) and the mapped
classes first, idempotently; the dataset's counters once the rows are in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.preflight import Checked
from pipeline.remote_checks import PREFLIGHT_RETRY
from transforms.clients.supabase import SupabaseClient


@contextlib.contextmanager
def target_client(checked: Checked) -> Iterator[SupabaseClient]:
    """A Supabase client for the run's own few requests (classes, run record, counters)."""
    sb = SupabaseClient(checked.supabase.url, checked.supabase.service_key.resolve(),
                        bucket=checked.supabase.bucket, retry=PREFLIGHT_RETRY)
    try:
        yield sb
    finally:
        sb.close()


def prepare_target(checked: Checked) -> dict[str, str | None]:
    """The first writes: the bucket if asked for, then the mapped classes. Returns name -> class id."""
    with target_client(checked) as sb:
        if not checked.bucket_exists:
            sb.create_bucket()
        class_ids = dict(checked.mapping.class_ids)
        classes = checked.tables.classes
        if checked.mapping.to_create:
            rows = [{"dataset_id": checked.dataset_id, "name": name, "display_name": name, "color": color}
                    for name, color in sorted(checked.mapping.to_create.items())]
            sb.upsert(classes, rows, on_conflict="dataset_id,name", ignore_duplicates=True)
            # Read the dataset's classes and match in Python: PostgREST's in.(...) filter loses leading
            # blanks of unquoted values, so a class named " leading" would be created but not found.
            found = [r for r in sb.select(classes, "id,name", dataset_id=checked.dataset_id)
                     if r["name"] in checked.mapping.to_create]
            class_ids.update({r["name"]: r["id"] for r in found})
            missing = sorted(set(checked.mapping.to_create) - {r["name"] for r in found})
            if missing:
                raise RuntimeError(f"classes were not created: {missing}")
        return class_ids


def refresh_counters(checked: Checked) -> None:
    """Recompute the dataset's counters once, after the rows are in (never per row)."""
    with target_client(checked) as sb:
        sb.rpc(checked.tables.refresh_counters, {"p_dataset_id": checked.dataset_id})
