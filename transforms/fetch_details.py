"""Step 3: fetch each image's details (annotations, split, tags, CDN url) from Roboflow.

A batch's ids are fetched concurrently on the worker's pool, all through the process's shared
rate limiter; 429s and 5xx are retried with backoff honouring ``Retry-After``, a 404 is retried
briefly (Roboflow is eventually consistent after uploads) and then dead-lettered (the image was
deleted after listing). ``/undefined/`` CDN urls are rebuilt from owner + id.

    details = batches | FetchDetails(roboflow_config, context, concurrency=20)
"""

from __future__ import annotations

import apache_beam as beam

from transforms.batch_step import BatchStepFn, run_batch_step
from transforms.clients.resources import RoboflowConfig, roboflow_client
from transforms.core.convert import check_classes, parse_details
from transforms.core.records import ImageDetails, ImportContext
from transforms.core.tally import count


class FetchDetailsFn(BatchStepFn):
    step = "fetch_details"

    def __init__(self, roboflow: RoboflowConfig, context: ImportContext, concurrency: int):
        super().__init__(concurrency)
        self.roboflow = roboflow
        self.context = context

    def setup(self) -> None:
        super().setup()
        self._client = self.lease(roboflow_client(self.roboflow))

    def fetch(self, image_id: str) -> ImageDetails:
        ctx = self.context
        details = parse_details(self._client.image_details(ctx.workspace, ctx.project, image_id))
        check_classes(details, ctx)
        return details

    def process(self, batch: list[str]):
        fetched = []
        for image_id, details, error in self.run_each(batch, self.fetch):
            if error is not None:
                yield self.dead_letter(image_id, error)
            else:
                fetched.append(details)
        count("details_fetched", len(fetched))
        if fetched:
            yield fetched


class FetchDetails(beam.PTransform):
    def __init__(self, roboflow: RoboflowConfig, context: ImportContext, concurrency: int):
        super().__init__()
        self.fn = FetchDetailsFn(roboflow, context, concurrency)

    def expand(self, batches):
        return run_batch_step(batches, self.fn)

