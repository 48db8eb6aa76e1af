"""Step 1: list the project's image ids with a splittable DoFn over Roboflow's search pages.

Two listings, chosen by ``ListingSpec.mode``:

* ``token`` (default): workspace search ``POST /{ws}/search/v1`` walked by continuation token.
  Keyset paging is stable, so every image comes exactly once; it is sequential by nature, so the
  restriction is one unit and the whole walk happens in one ``process()`` call.
* ``offset``: project search ``POST /{ws}/{proj}/search`` pages of 250; the restriction is the page
  range, split up front so pages are read in parallel. Roboflow's offset order is unstable
  (roboflow-python #418: duplicates and misses), so ids are de-duplicated and the distinct count is
  reconciled with ``total`` in the summary.

    ids = (p | beam.Create([spec]) | ListImages(roboflow_config))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import DoFn, RestrictionProvider

from transforms.batch_step import DEAD_LETTER, NAMESPACE, ThrottlingReport, fold_tally
from transforms.clients.resources import RoboflowConfig, roboflow_client
from transforms.core.records import DeadLetter
from transforms.core.tally import collecting

PAGE_SIZE = 250


@dataclasses.dataclass(frozen=True)
class ListingSpec:
    workspace: str
    project: str
    total: int  # what Roboflow reported for this listing, used to size the page range
    mode: str = "token"
    page_size: int = PAGE_SIZE
    filters: tuple[tuple[str, Any], ...] = ()  # project-search body filters (offset mode)
    query: str = ""  # RoboQL after ``project:<slug>`` (token mode)
    pages_per_split: int = 1

    def page_count(self) -> int:
        if self.mode == "token":
            return 1
        # One page more than ``total`` suggests, so a project that grew since the count is still read.
        return max(1, math.ceil(self.total / self.page_size) + 1)

    def roboql(self) -> str:
        return f"project:{self.project} {self.query or '*'}".strip()


class ListImageIdsFn(beam.DoFn, RestrictionProvider):
    """Emits raw image ids (duplicates possible in offset mode) and dead letters for lost pages."""

    def __init__(self, roboflow: RoboflowConfig):
        self.roboflow = roboflow

    # ---- RestrictionProvider ----
    def initial_restriction(self, spec: ListingSpec) -> OffsetRange:
        return OffsetRange(0, spec.page_count())

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, spec: ListingSpec, restriction: OffsetRange):
        if spec.mode == "offset":
            yield from restriction.split(spec.pages_per_split)
        else:
            yield restriction

    def restriction_size(self, spec: ListingSpec, restriction: OffsetRange) -> int:
        return restriction.size()

    # ---- DoFn ----
    def setup(self) -> None:
        self._holder = roboflow_client(self.roboflow)
        self._client = self._holder.client
        self._throttling = ThrottlingReport()

    def process(self, spec: ListingSpec, tracker=DoFn.RestrictionParam()):
        page = tracker.current_restriction().start
        while tracker.try_claim(page):
            if spec.mode == "token":
                yield from self._walk_tokens(spec)
            else:
                yield from self._read_offset_page(spec, page)
            page += 1

    def _count(self, tally) -> None:
        fold_tally(tally, self._throttling)

    def _read_offset_page(self, spec: ListingSpec, page: int):
        with collecting() as tally:
            try:
                result = self._client.search_page(spec.workspace, spec.project, offset=page * spec.page_size,
                                                  limit=spec.page_size, filters=dict(spec.filters))
            except Exception as exc:
                result = exc
        self._count(tally)
        if isinstance(result, Exception):
            yield _lost_page(f"offset:{page * spec.page_size}", result)
            return
        Metrics.counter(NAMESPACE, "list_pages").inc()
        Metrics.counter(NAMESPACE, "list_ids_raw").inc(len(result.ids))
        yield from result.ids

    def _walk_tokens(self, spec: ListingSpec):
        token = None
        while True:
            with collecting() as tally:
                try:
                    result = self._client.search_v1_page(spec.workspace, spec.roboql(), page_size=spec.page_size,
                                                         token=token)
                except Exception as exc:
                    result = exc
            self._count(tally)
            if isinstance(result, Exception):
                yield _lost_page("token-walk", result)
                return
            Metrics.counter(NAMESPACE, "list_pages").inc()
            Metrics.counter(NAMESPACE, "list_ids_raw").inc(len(result.ids))
            yield from result.ids
            if not result.ids or not result.continuation_token:
                return
            token = result.continuation_token


def _lost_page(where: str, error: Exception) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, "list_pages_failed").inc()
    return beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.of(f"page:{where}", "list", error))


class ListImages(beam.PTransform):
    """ListingSpec -> distinct image ids (``ok``) and lost pages (``dead_letter``)."""

    def __init__(self, roboflow: RoboflowConfig):
        super().__init__()
        self.roboflow = roboflow

    def expand(self, specs):
        listed = specs | "ReadPages" >> beam.ParDo(ListImageIdsFn(self.roboflow)).with_outputs(
            DEAD_LETTER, main="ok")
        distinct = (
            listed.ok
            | "Distinct" >> beam.Distinct()
            | "CountListed" >> beam.Map(count_listed)
        )
        return {"ok": distinct, DEAD_LETTER: listed[DEAD_LETTER]}


def count_listed(image_id: str) -> str:
    Metrics.counter(NAMESPACE, "images_listed").inc()
    return image_id
