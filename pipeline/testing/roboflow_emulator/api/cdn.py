"""The CDN host's image files: `/{owner}/{id}/original.jpg`, `thumb.jpg`, `annotation-{group}.json`."""

from __future__ import annotations

from ..dataset import ImageRecord
from ..faults import FaultState
from ..images import sniff_content_type
from .context import ApiContext
from .wire import Response, json_response, no_such_key

CDN_CACHE = {"Cache-Control": "public, max-age=31536000"}


class CdnFiles:
    """Image bytes and annotation JSON; a missing object is the storage host's XML NoSuchKey."""

    def __init__(self, context: ApiContext):
        self.context = context

    def _record(self, owner: str, image_id: str, faults: FaultState) -> ImageRecord | None:
        """The record behind a CDN path, or None when storage has no such object."""
        dataset = self.context.dataset
        index = dataset.index_of(image_id)
        if owner != dataset.owner or index is None or not dataset.is_live(index):
            return None
        if index in faults.deleted_after_listing:
            return None
        return dataset.record(index)

    def original(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self._record(owner, image_id, faults)
        if record is None:
            return no_such_key()
        if record.index in faults.undecodable:
            data = self.context.images.undecodable(record)
        else:
            data = self.context.images.original(record)
        return Response(200, data, sniff_content_type(data), dict(CDN_CACHE))

    def thumb(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self._record(owner, image_id, faults)
        if record is None:
            return no_such_key()
        data = self.context.images.thumbnail(record)
        return Response(200, data, sniff_content_type(data), dict(CDN_CACHE))

    def annotation(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self._record(owner, image_id, faults)
        if record is None or not record.annotated:
            return no_such_key()
        dataset = self.context.dataset
        annotation = {"key": dataset.annotation_group, "width": record.width, "height": record.height}
        return json_response(200, {**annotation, "boxes": [dict(box) for box in record.boxes]})
