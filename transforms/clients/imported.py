"""What a dataset already holds from a Roboflow project, read by keyset pages, without Beam.

``--prune`` (transforms/prune.py) compares it with the listing; ``--plan`` counts what a run would
skip, resume or leave behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import project_folder
from transforms.core.tables import OD, PlatformTables

READ_PAGE = 1000


@dataclasses.dataclass(frozen=True)
class ImportedImage:
    """One image an earlier run imported into this dataset from this Roboflow project."""

    roboflow_id: str
    image_id: str  # od_images.id
    storage_path: str | None
    import_hash: str | None
    size_bytes: int | None
    missing_since: str | None = None
    run_id: str | None = None  # with_sync: the run that wrote it, and its listing fingerprint (0007)
    listing_fingerprint: str | None = None


def roboflow_id_of(ref: str | None, dataset_id: str) -> str | None:
    """The Roboflow image id of a source ref this dataset's imports wrote (``roboflow:<id>@<dataset>``)."""
    prefix, suffix = "roboflow:", f"@{dataset_id}"
    if not ref or not ref.startswith(prefix) or not ref.endswith(suffix):
        return None
    return ref[len(prefix):-len(suffix)] or None


def iter_imported(client: SupabaseClient, dataset_id: str, workspace: str, project: str, *,
                  with_marks: bool = False, with_sync: bool = False, page_size: int = READ_PAGE,
                  tables: PlatformTables = OD) -> Iterator[ImportedImage]:
    """Every image of ``dataset_id`` imported from ``workspace/project``, by keyset pages.

    A page is asked for until one comes back empty, so a server cap below ``page_size`` (PostgREST
    ``max-rows``) cannot end the walk early.
    """
    columns = "image_id,import_hash" + (",source_missing_at" if with_marks else "") + \
        (",import_run_id,listing_fingerprint" if with_sync else "") + \
        f",{tables.images}!inner(source_ref,storage_path,file_size_bytes)"
    after = None
    while True:
        rows = client.select_after(tables.dataset_images, columns, key="image_id", after=after, limit=page_size,
                                   dataset_id=dataset_id,
                                   **{f"{tables.images}.folder": project_folder(workspace, project)})
        if not rows:
            return
        for row in rows:
            image = row.get(tables.images) or {}
            roboflow_id = roboflow_id_of(image.get("source_ref"), dataset_id)
            if roboflow_id is not None:  # rows linked from another dataset's import are not ours to prune
                yield ImportedImage(roboflow_id, row["image_id"], image.get("storage_path"), row.get("import_hash"),
                                    image.get("file_size_bytes"), row.get("source_missing_at"),
                                    row.get("import_run_id"), row.get("listing_fingerprint"))
        after = rows[-1]["image_id"]
