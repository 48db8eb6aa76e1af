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

import datetime
import logging

import apache_beam as beam

from transforms.batch_step import LeasingDoFn, counted
from transforms.clients.imported import ImportedImage, iter_imported
from transforms.clients.resources import SupabaseConfig, supabase_client
from transforms.core.records import ImportContext
from transforms.core.tables import OD, PlatformTables
from transforms.core.tally import count

log = logging.getLogger(__name__)

PRUNE_BATCH = 200


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
