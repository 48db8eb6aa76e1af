"""Step 6 (``--prune``): remove, or mark, this project's images that Roboflow no longer lists.

What is already imported is read from Supabase (this dataset's ``od_dataset_images`` joined to
``od_images`` of the project's folder, keyset-paged) and co-grouped with the listed ids:

* imported, not listed -> pruned: the storage object, this dataset's annotations and link, and the
  ``od_images`` row when no other dataset links it (its foreign keys cascade); or, with
  ``mode="mark"``, ``od_dataset_images.source_missing_at`` is set (migration 0005);
* imported, listed and marked missing earlier -> the mark is cleared.

Pruning waits for the listing (side inputs) and happens only when it was complete: no lost page and
at least Roboflow's total listed, and never on an empty listing (a glitch must not wipe a dataset).
Otherwise nothing is removed and ``prune_skipped`` says how many would have been. Objects go first
and ``od_images`` last, so a run stopped half way leaves rows a second run finds and finishes.
A classification import prunes the same way in its `cls_*` counterparts (migration 0006).

    {"listed": ids, "lost_pages": listing_dead_letters} | PruneImages(supabase_config, context, "delete", total)
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterator

import apache_beam as beam

from transforms.batch_step import LeasingDoFn, counted
from transforms.clients.resources import SupabaseConfig, supabase_client
from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import project_folder
from transforms.core.records import ImportContext
from transforms.core.tables import OD, PlatformTables
from transforms.core.tally import count

log = logging.getLogger(__name__)

READ_PAGE = 1000
PRUNE_BATCH = 200


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


class ReadImportedFn(LeasingDoFn):
    """ImportContext -> (Roboflow id, ImportedImage) for everything already imported."""

    def __init__(self, supabase: SupabaseConfig, with_marks: bool):
        self.supabase = supabase
        self.with_marks = with_marks

    def setup(self) -> None:
        self._client = self.lease(supabase_client(self.supabase))

    def process(self, ctx: ImportContext):
        with counted():
            images = list(iter_imported(self._client, ctx.dataset_id, ctx.workspace, ctx.project,
                                        with_marks=self.with_marks, tables=ctx.tables))
        count("prune_imported_read", len(images))
        for image in images:
            yield image.roboflow_id, image


def prune_actions(grouped: tuple[str, dict], mode: str):
    """("prune", image) for an imported image that was not listed; ("unmark", image) for a marked one that was."""
    _, sides = grouped
    listed = bool(list(sides["listed"]))
    for image in sides["imported"]:
        if not listed:
            yield "prune", image
        elif mode == "mark" and image.missing_since:
            yield "unmark", image


class PruneFn(LeasingDoFn):
    """Batches of actions -> deletes or marks, once the listing is known to be complete."""

    def __init__(self, supabase: SupabaseConfig, dataset_id: str, mode: str, total: int,
                 tables: PlatformTables = OD):
        self.supabase = supabase
        self.dataset_id = dataset_id
        self.tables = tables
        self.mode = mode
        self.total = total

    def setup(self) -> None:
        self._client = self.lease(supabase_client(self.supabase))

    def process(self, batch: list[tuple[str, ImportedImage]], listed: int, lost_pages: int):
        unmark = [image for action, image in batch if action == "unmark"]
        stale = [image for action, image in batch if action == "prune"]
        with counted():
            try:
                if unmark:
                    self._update_marks(unmark, None)
                    count("images_unmarked", len(unmark))
                if not stale:
                    return
                if lost_pages or listed < self.total or not listed:  # an empty listing never prunes everything
                    count("prune_skipped", len(stale))
                    return
                if self.mode == "mark":
                    self._mark(stale)
                else:
                    self._delete(stale)
            except Exception as exc:  # the import itself is done: count, log, and let the summary say so
                count("prune_failed", len(stale))
                log.warning("prune of %d images failed: %s", len(stale), exc)

    def _update_marks(self, images: list[ImportedImage], value: str | None) -> None:
        self._client.update_rows(self.tables.dataset_images, {"source_missing_at": value},
                                 dataset_id=self.dataset_id, image_id=[i.image_id for i in images])

    def _mark(self, stale: list[ImportedImage]) -> None:
        fresh = [image for image in stale if not image.missing_since]  # keep when it first went missing
        if fresh:
            self._update_marks(fresh, datetime.datetime.now(datetime.UTC).isoformat())
        count("images_marked", len(stale))

    def _delete(self, stale: list[ImportedImage]) -> None:
        client = self._client
        ids = [image.image_id for image in stale]
        tables = self.tables
        shared = {row["image_id"] for row in client.select(tables.dataset_images, "image_id,dataset_id", image_id=ids)
                  if row["dataset_id"] != self.dataset_id}
        own = [image for image in stale if image.image_id not in shared]
        paths = [image.storage_path for image in own if image.storage_path]
        client.remove_objects(paths)
        client.delete_rows(tables.labels, dataset_id=self.dataset_id, image_id=ids)
        if own:
            client.delete_rows(tables.images, id=[image.image_id for image in own])
        client.delete_rows(tables.dataset_images, dataset_id=self.dataset_id, image_id=ids)
        count("images_pruned", len(stale))
        count("objects_removed", len(paths))
        count("bytes_removed", sum(image.size_bytes or 0 for image in own))


class PruneImages(beam.PTransform):
    """{"listed": distinct ids, "lost_pages": listing dead letters} -> nothing; counters tell the outcome."""

    def __init__(self, supabase: SupabaseConfig, context: ImportContext, mode: str, total: int):
        super().__init__()
        self.supabase = supabase
        self.context = context
        self.mode = mode
        self.total = total

    def expand(self, inputs):
        listed, lost_pages = inputs["listed"], inputs["lost_pages"]
        imported = (
            listed.pipeline
            | "Target" >> beam.Create([self.context])
            | "ReadImported" >> beam.ParDo(ReadImportedFn(self.supabase, with_marks=self.mode == "mark"))
        )
        listed_count = listed | "CountListed" >> beam.combiners.Count.Globally()
        lost_count = lost_pages | "CountLostPages" >> beam.combiners.Count.Globally()
        return (
            {"listed": listed | "KeyListed" >> beam.Map(lambda image_id: (image_id, True)), "imported": imported}
            | "Join" >> beam.CoGroupByKey()
            | "Actions" >> beam.FlatMap(prune_actions, self.mode)
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=PRUNE_BATCH)
            | "Prune" >> beam.ParDo(PruneFn(self.supabase, self.context.dataset_id, self.mode, self.total,
                                            self.context.tables),
                                    listed=beam.pvalue.AsSingleton(listed_count),
                                    lost_pages=beam.pvalue.AsSingleton(lost_count))
        )
