"""Step 4: download each original from Roboflow's CDN and upload it to Supabase Storage.

Per batch, one lookup tells what earlier runs left: an image whose import hash is unchanged is
skipped outright (nothing downloaded, uploaded or written); one whose annotations changed keeps its
stored object and only has its rows rewritten. Everything else is downloaded (retried when the body
is short), checked to be an image (content type sniffed from the bytes, not the ``.jpg`` name),
held against the bucket's size limit and allowed types (a refused image is dead-lettered without an
upload attempt, so widening the bucket and ``--retry_dead_letters`` imports it) and uploaded to
``{dataset}/roboflow/{image id}.{ext}``. A re-upload of an object that is already there counts as
success.

    stored = details | UploadImages(roboflow_config, supabase_config, context, concurrency=20)
"""

from __future__ import annotations

import hashlib

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
from transforms.core.records import ExistingImage, ImageDetails, ImportContext, StoredImage
from transforms.core.retry import PermanentError, TransientError
from transforms.core.tally import count


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

    def store(self, item: tuple[ImageDetails, ExistingImage | None]) -> StoredImage | None:
        details, existing = item
        ctx = self.context
        fingerprint = import_hash(details, ctx)
        if existing is not None and existing.storage_path and existing.import_hash == fingerprint:
            return None
        if existing is not None and existing.storage_path and existing.file_hash and existing.width:
            return StoredImage(details, existing.storage_path, existing.file_hash, existing.file_size_bytes or 0,
                               existing.mime_type or "image/jpeg", existing.width, existing.height or 0,
                               fingerprint, uploaded=False, previously_imported=True)
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
                           previously_imported=existing is not None)

    def process(self, batch: list[ImageDetails]):
        try:
            existing = self.collect(self._supabase.existing_images, self.context.dataset_id,
                                    [source_ref(self.context.dataset_id, d.image_id) for d in batch],
                                    self.context.tables)
        except Exception as exc:
            for details in batch:
                yield self.dead_letter(details.image_id, exc)
            return
        items = [(d, existing.get(source_ref(self.context.dataset_id, d.image_id))) for d in batch]
        stored = []
        for (details, _), result, error in self.run_each(items, self.store):
            if error is not None:
                yield self.dead_letter(details.image_id, error)
            elif result is None:
                count("images_unchanged")
                count(f"label_state.{label_state(details)}")
                count(f"split.{details.split or 'none'}")
            else:
                stored.append(result)
        if stored:
            yield stored


class UploadImages(beam.PTransform):
    def __init__(self, roboflow: RoboflowConfig, supabase: SupabaseConfig, context: ImportContext,
                 concurrency: int):
        super().__init__()
        self.fn = UploadImagesFn(roboflow, supabase, context, concurrency)

    def expand(self, batches):
        return run_batch_step(batches, self.fn)
