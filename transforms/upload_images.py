"""Step 4: download each original from Roboflow's CDN and upload it to Supabase Storage.

Per batch, one lookup tells what earlier runs left: an image whose import hash is unchanged is
skipped outright (nothing downloaded, uploaded or written); one whose annotations changed keeps its
stored object and only has its rows rewritten. Everything else is downloaded (retried when the body
is short), checked to be an image (content type sniffed from the bytes, not the ``.jpg`` name),
held against the bucket's size limit and allowed types (a refused image is dead-lettered without an
upload attempt, so widening the bucket and ``--retry_dead_letters`` imports it) and uploaded to
``{dataset}/roboflow/{image id}.{ext}``. A re-upload of an object that is already there counts as
success. An unchanged image whose listing summary is new (its ``user_metadata`` changed, or it was
imported without one) only gets that fingerprint stored, one upsert per batch, so
``--change_detection listing`` skips it next time.

    stored = details | UploadImages(roboflow_config, supabase_config, context, concurrency=20)
"""

from __future__ import annotations

import hashlib
import logging

import apache_beam as beam

from transforms.batch_step import BatchStepFn, run_batch_step
from transforms.clients.resources import RoboflowConfig, SupabaseConfig, roboflow_client, supabase_client
from transforms.core.convert import (
    ImageDataError,
    import_hash,
    label_state,
    mime_allowed,
    sniff_image,
    source_ref,
    storage_path,
)
from transforms.core.records import ExistingImage, FetchedImage, ImageDetails, ImportContext, StoredImage
from transforms.core.retry import PermanentError, TransientError
from transforms.core.tally import count

log = logging.getLogger(__name__)


def checked_image(data: bytes, length_checked: bool = True):
    """Sniff the bytes. An image cut short is retried only when the transfer may have been cut
    (no ``Content-Length`` to check against); a complete transfer of a broken file is final."""
    try:
        return sniff_image(data)
    except ImageDataError as exc:
        if exc.retryable and not length_checked:
            raise TransientError(exc.kind, str(exc)) from None
        kind = "undecodable_image" if exc.retryable else exc.kind
        raise PermanentError(kind, str(exc)) from None


class UploadImagesFn(BatchStepFn):
    step = "upload"

    def __init__(self, roboflow: RoboflowConfig, supabase: SupabaseConfig, context: ImportContext,
                 concurrency: int):
        super().__init__(concurrency)
        self.roboflow = roboflow
        self.supabase = supabase
        self.context = context

    def setup(self) -> None:
        super().setup()
        self._roboflow = self.lease(roboflow_client(self.roboflow))
        self._supabase = self.lease(supabase_client(self.supabase))

    def store(self, item: tuple[FetchedImage, ExistingImage | None]) -> StoredImage | None:
        fetched, existing = item
        details, listing = fetched.details, fetched.listing_fingerprint
        ctx = self.context
        fingerprint = import_hash(details, ctx)
        if existing is not None and existing.storage_path and existing.import_hash == fingerprint:
            return None
        if existing is not None and existing.storage_path and existing.file_hash and existing.width:
            return StoredImage(details, existing.storage_path, existing.file_hash, existing.file_size_bytes or 0,
                               existing.mime_type or "image/jpeg", existing.width, existing.height or 0,
                               fingerprint, uploaded=False, previously_imported=True, listing_fingerprint=listing)
        data = self._roboflow.download(details.original_url, validate=checked_image)
        info = sniff_image(data)
        if ctx.max_object_bytes is not None and len(data) > ctx.max_object_bytes:
            raise PermanentError("too_large", f"{len(data)} bytes is over the bucket's file_size_limit of "
                                              f"{ctx.max_object_bytes} bytes; raise it, then --retry_dead_letters")
        if not mime_allowed(info.mime_type, ctx.allowed_mime_types):
            raise PermanentError("mime_not_allowed", f"{info.mime_type} is not in the bucket's allowed_mime_types "
                                                     f"{list(ctx.allowed_mime_types or ())}; add it, then "
                                                     "--retry_dead_letters")
        path = storage_path(ctx.dataset_id, details.image_id, info.extension)
        outcome = self._supabase.upload(path, data, info.mime_type)
        count("bytes_downloaded", len(data))
        count(f"objects_{outcome}")
        return StoredImage(details, path, hashlib.sha256(data).hexdigest(), len(data), info.mime_type,
                           info.width, info.height, fingerprint, uploaded=outcome == "uploaded",
                           previously_imported=existing is not None, listing_fingerprint=listing)

    def process(self, batch: list[FetchedImage | ImageDetails]):
        batch = [item if isinstance(item, FetchedImage) else FetchedImage(item) for item in batch]
        dataset_id = self.context.dataset_id
        try:
            existing = self.collect(self._supabase.existing_images, dataset_id,
                                    [source_ref(dataset_id, f.details.image_id) for f in batch], self.context.tables)
        except Exception as exc:
            for fetched in batch:
                yield self.dead_letter(fetched.details.image_id, exc)
            return
        items = [(f, existing.get(source_ref(dataset_id, f.details.image_id))) for f in batch]
        stored, stale = [], []
        for (fetched, known), result, error in self.run_each(items, self.store):
            details = fetched.details
            if error is not None:
                yield self.dead_letter(details.image_id, error)
            elif result is None:
                count("images_unchanged")
                count(f"label_state.{label_state(details)}")
                count(f"split.{details.split or 'none'}")
                if fetched.listing_fingerprint and known.listing_fingerprint != fetched.listing_fingerprint:
                    stale.append({"dataset_id": dataset_id, "image_id": known.image_id,
                                  "listing_fingerprint": fetched.listing_fingerprint})
            else:
                stored.append(result)
        if stale:  # unchanged rows, new summary (tags, metadata...): else listing mode would refetch them forever
            try:
                self.collect(lambda: self._supabase.upsert(self.context.tables.dataset_images, stale,
                                                           on_conflict="dataset_id,image_id"))
                count("listing_fingerprints_refreshed", len(stale))
            except Exception as exc:  # the rows are right; only the next listing sync pays their details again
                count("listing_fingerprints_refresh_failed", len(stale))
                log.warning("could not store %d listing fingerprints: %s", len(stale), exc)
        if stored:
            yield stored


class UploadImages(beam.PTransform):
    def __init__(self, roboflow: RoboflowConfig, supabase: SupabaseConfig, context: ImportContext,
                 concurrency: int):
        super().__init__()
        self.fn = UploadImagesFn(roboflow, supabase, context, concurrency)

    def expand(self, batches):
        return run_batch_step(batches, self.fn)
