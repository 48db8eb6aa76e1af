"""`GET /{ws}/{project}/images/{id}`: one image's details, with its CDN urls and annotation."""

from __future__ import annotations

from ..faults import FaultState
from .context import ApiContext
from .wire import Response, error_response, json_response


class ImageDetails:
    """Image details as the SDK's `project.image(id)` reads them, with the faults that touch one image."""

    def __init__(self, context: ApiContext):
        self.context = context

    def details(self, image_id: str, route: str, faults: FaultState) -> Response:
        context, dataset, config = self.context, self.context.dataset, self.context.config
        index = dataset.index_of(image_id)
        missing = (
            index is None
            or not dataset.is_project_image(index)
            or not dataset.is_live(index)
            or index in faults.deleted_after_listing
        )
        if missing:
            return error_response(404, "Image not found.", "NotFoundException", faults.error_style(route, "string"))
        if faults.take_pending_404(index):
            return error_response(
                404,
                "Image not found in dataset.",
                "InvalidParameterException",
                faults.error_style(route, "object"),
                hint="The image ID is returned by the upload API.",
                include_status=False,
            )
        record = dataset.record(index)
        image: dict[str, object] = {"id": record.id, "name": record.name}
        if record.annotated:
            image["annotation"] = {
                "key": dataset.annotation_group,
                "width": record.width,
                "height": record.height,
                "boxes": [dict(box) for box in record.boxes],
            }
        labels: object = list(record.labels)
        if config.labels_shape == "string" and len(record.labels) == 1:
            labels = record.labels[0]  # an inferred variant of the documented list
        image.update(
            {
                "labels": labels,
                "split": record.split,
                "tags": list(record.tags),
                "created": record.created,
                "urls": {
                    "original": context.original_url(record, undefined=faults.has_undefined_url(record.id)),
                    "thumb": context.thumb_url(record),
                    "annotation": context.annotation_url(record),
                },
                "embedding": context.embedding(record),
            }
        )
        if record.user_metadata:  # INFERRED: named like the search field `user_metadata`; details do not document it
            image["user_metadata"] = dict(record.user_metadata)
        if config.details_include_owner:
            image["owner"] = record.owner
        return json_response(200, {"image": image})
