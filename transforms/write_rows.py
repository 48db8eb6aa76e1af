"""Step 5: write ``od_images``, ``od_annotations`` and ``od_dataset_images`` rows (their ``cls_*``
counterparts for a classification project: ``cls_labels`` keyed by class), idempotently.

One batch is four requests: merge-upsert the images (``on_conflict=source_ref``, ids are
deterministic), merge-upsert the annotations (``dataset_id,image_id,source_key``, content-derived
keys), delete the annotations a re-imported image no longer has, and upsert the dataset links
*last*, carrying the import hash, the run's id and the listing fingerprint: a crash anywhere
before leaves no hash, so the next run redoes the image, and a resumed run knows it wrote the
image (transforms/fetch_details.py skips it). A constraint violation is narrowed down by halving
the batch, so only the offending image is dead-lettered.

    written = stored | WriteRows(supabase_config, context)
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from transforms.batch_step import BatchStepFn, run_batch_step
from transforms.clients.resources import SupabaseConfig, supabase_client
from transforms.core.convert import ImageRows, build_rows, label_state
from transforms.core.records import ImportContext, StoredImage
from transforms.core.retry import PermanentError
from transforms.core.tally import count


def with_sync_columns(rows: ImageRows, stored: StoredImage, ctx: ImportContext) -> ImageRows:
    """The dataset link also records which run wrote it and the listing summary it was imported at
    (migration 0007), for resumes and ``--change_detection listing``."""
    link = rows.dataset_image | {"import_run_id": ctx.run_id, "listing_fingerprint": stored.listing_fingerprint}
    return dataclasses.replace(rows, dataset_image=link)


class WriteRowsFn(BatchStepFn):
    step = "write_rows"

    def __init__(self, supabase: SupabaseConfig, context: ImportContext):
        super().__init__(concurrency=1)
        self.supabase = supabase
        self.context = context

    def setup(self) -> None:
        super().setup()
        self._client = self.lease(supabase_client(self.supabase))

    def write(self, group: list[tuple[StoredImage, ImageRows]]) -> None:
        client, tables = self._client, self.context.tables
        client.upsert(tables.images, [rows.image for _, rows in group], on_conflict="source_ref")
        client.upsert(tables.labels, [a for _, rows in group for a in rows.annotations],
                      on_conflict=tables.label_conflict)
        for stored, rows in group:
            if stored.previously_imported:
                client.delete_stale_annotations(self.context.dataset_id, rows.image["id"],
                                                [a[tables.label_key] for a in rows.annotations], tables)
        client.upsert(tables.dataset_images, [rows.dataset_image for _, rows in group],
                      on_conflict="dataset_id,image_id")

    def write_isolating(self, group: list[tuple[StoredImage, ImageRows]]) -> dict[str, Exception]:
        """Write the group; on a permanent error, halve it until the failing images are found."""
        try:
            self.write(group)
            return {}
        except PermanentError as exc:
            if len(group) == 1:
                return {group[0][0].details.image_id: exc}
        except Exception as exc:  # retries exhausted: every image of the group is affected
            return {stored.details.image_id: exc for stored, _ in group}
        middle = len(group) // 2
        return self.write_isolating(group[:middle]) | self.write_isolating(group[middle:])

    def process(self, batch: list[StoredImage]):
        ctx = self.context
        group = [(stored, with_sync_columns(build_rows(stored, ctx, self._client.object_url(stored.storage_path)),
                                            stored, ctx))
                 for stored in batch]
        failures = self.collect(self.write_isolating, group)
        for stored, rows in group:
            image_id = stored.details.image_id
            if image_id in failures:
                yield self.dead_letter(image_id, failures[image_id])
                continue
            count("images_written")
            count("images_changed" if stored.previously_imported else "images_new")
            count(f"split.{stored.details.split or 'none'}")
            count("annotations_written", len(rows.annotations))
            count(f"label_state.{label_state(stored.details)}")
            if rows.keypoints:
                count("keypoints_written", rows.keypoints)
            for reason, n in rows.dropped_annotations.items():
                count(f"annotations_dropped.{reason}", n)
            if stored.uploaded:
                count("images_uploaded")
                count("bytes_uploaded", stored.size_bytes)
            yield image_id


class WriteRows(beam.PTransform):
    def __init__(self, supabase: SupabaseConfig, context: ImportContext):
        super().__init__()
        self.fn = WriteRowsFn(supabase, context)

    def expand(self, batches):
        return run_batch_step(batches, self.fn)
