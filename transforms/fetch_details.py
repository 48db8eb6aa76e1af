"""Step 3: fetch each image's details (annotations, split, tags, CDN url) from Roboflow.

A batch's ids are fetched concurrently on the worker's pool, all through the process's shared
rate limiter; 429s and 5xx are retried with backoff honouring ``Retry-After``, a 404 is retried
briefly (Roboflow is eventually consistent after uploads) and then dead-lettered (the image was
deleted after listing). ``/undefined/`` CDN urls are rebuilt from owner + id.

The details call is the import's bottleneck (one per image, under Roboflow's rate limit), so one
Supabase lookup per batch first tells which images need none (:func:`skip_reason`): those the run
being resumed already wrote, and with ``--change_detection listing`` those whose listing summary is
the one stored at their import. Both are counted as unchanged, with the reason; a failed lookup
only costs the details calls it would have saved.

Each worker thread starts a batch's calls before it hands the previous batch on (``LOOK_AHEAD``), so
it keeps calling Roboflow while the steps after it upload and write; a bundle's last batch leaves
from ``finish_bundle``.

    details = batches | FetchDetails(roboflow_config, context, concurrency=20, supabase=supabase_config)
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.batch_step import DEAD_LETTER, BatchStepFn, Started, letters_for_crash, run_batch_step
from transforms.clients.resources import (
    RoboflowConfig,
    SupabaseConfig,
    rate_peers,
    roboflow_client,
    supabase_client,
)
from transforms.core.convert import check_classes, image_uuid, parse_details, source_ref
from transforms.core.records import FetchedImage, ImportContext, ListedImage
from transforms.core.tally import count

log = logging.getLogger(__name__)
RESUMED, UNCHANGED_SUMMARY = "resumed", "unchanged_summary"
# Batches whose details calls are under way while the previous batch is uploaded and written. One
# worker thread runs its bundle's steps one batch after another, so without it a process sends no
# details call while it uploads: a local multi_processing worker (one bundle per process) and, we
# infer, a Dataflow SDK process sent in bursts and held 0.6-0.8 of a shared limit (bench matrix).
LOOK_AHEAD = 1


def skip_reason(item: ListedImage, link: dict[str, Any] | None, ctx: ImportContext) -> str | None:
    """Why ``item`` needs no details call, or None. Only fully written images (import hash set) qualify."""
    if not link or not link.get("import_hash"):
        return None
    if ctx.resuming and ctx.run_id and link.get("import_run_id") == ctx.run_id:
        return RESUMED
    if ctx.change_detection == "listing" and item.fingerprint and link.get("listing_fingerprint") == item.fingerprint:
        return UNCHANGED_SUMMARY
    return None


class FetchDetailsFn(BatchStepFn):
    step = "fetch_details"

    def __init__(self, roboflow: RoboflowConfig, context: ImportContext, concurrency: int,
                 supabase: SupabaseConfig | None = None):
        super().__init__(concurrency)
        self.roboflow = roboflow
        self.context = context
        self.supabase = supabase

    def setup(self) -> None:
        super().setup()
        self._client = self.lease(roboflow_client(self.roboflow))
        self._supabase = self.lease(supabase_client(self.supabase)) if self.supabase is not None else None
        if self._supabase is not None:
            self.lease(rate_peers(self.roboflow, self.supabase, self._client, self._supabase))

    def fetch(self, item: ListedImage) -> FetchedImage:
        ctx = self.context
        details = parse_details(self._client.image_details(ctx.workspace, ctx.project, item.image_id))
        check_classes(details, ctx)
        return FetchedImage(details, item.fingerprint)

    def links(self, items: list[ListedImage]) -> dict[str, dict[str, Any]]:
        """Stored links of the batch's images, by Roboflow id; empty when no skipping applies."""
        ctx = self.context
        if self._supabase is None or not (ctx.resuming or ctx.change_detection == "listing"):
            return {}
        uuids = {image_uuid(source_ref(ctx.dataset_id, item.image_id)): item.image_id for item in items}
        try:
            found = self.collect(self._supabase.dataset_links, ctx.dataset_id, list(uuids), ctx.tables)
        except Exception as exc:  # the lookup only saves calls: without it every image is fetched
            log.warning("could not read stored links of a batch (%s); fetching its %d details", exc, len(items))
            count("details_lookup_failed")
            return {}
        return {uuids[uuid]: link for uuid, link in found.items() if uuid in uuids}

    def start_bundle(self) -> None:
        self._ahead: collections.deque[Started[ListedImage, FetchedImage]] = collections.deque()

    def process(self, batch: list[ListedImage | str]):
        items = [item if isinstance(item, ListedImage) else ListedImage(item) for item in batch]
        links = self.links(items)
        to_fetch = []
        if self.context.change_detection == "listing":
            count("listing_summary_unknown", sum(1 for item in items if not item.fingerprint))
        for item in items:
            reason = skip_reason(item, links.get(item.image_id), self.context)
            if reason is None:
                to_fetch.append(item)
                continue
            count(f"details_skipped.{reason}")
            count("images_unchanged")
            count(f"split.{item.split or 'none'}")
        self._ahead.append(self.start_each(to_fetch, self.fetch))
        while len(self._ahead) > LOOK_AHEAD:
            yield from self.outputs(self._ahead.popleft())

    def finish_bundle(self):
        while self._ahead:
            for output in self.outputs(self._ahead.popleft()):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, in_global_window(output.value))
                else:
                    yield in_global_window(output)

    def outputs(self, started: Started[ListedImage, FetchedImage]) -> list[Any]:
        """A started batch's details (one element) and dead letters, once all its calls are done."""
        try:
            fetched, letters = [], []
            for item, result, error in self.results(started):
                if error is not None:
                    letters.append(self.dead_letter(item.image_id, error))
                else:
                    fetched.append(result)
        except Exception as exc:  # a bug, not an image's fault: its batch still ends in the dead letters
            return [beam.pvalue.TaggedOutput(DEAD_LETTER, letter) for letter in
                    letters_for_crash(started.items, self.step, f"{type(exc).__name__}: {exc!r}")]
        count("details_fetched", len(fetched))
        return [*letters, fetched] if fetched else letters


def in_global_window(value: Any) -> WindowedValue:
    """An output of ``finish_bundle``, which Beam wants windowed: the import runs in the global window."""
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


class FetchDetails(beam.PTransform):
    def __init__(self, roboflow: RoboflowConfig, context: ImportContext, concurrency: int,
                 supabase: SupabaseConfig | None = None):
        super().__init__()
        self.fn = FetchDetailsFn(roboflow, context, concurrency, supabase)

    def expand(self, batches):
        return run_batch_step(batches, self.fn)
