"""Step 1: list the project's image ids with a splittable DoFn over Roboflow's search pages.

Three listings, chosen by ``ListingSpec.mode``:

* ``token``: workspace search ``POST /{ws}/search/v1`` walked by continuation token.
  Keyset paging is stable, so every image comes exactly once; it is sequential by nature, so the
  restriction is one unit and the whole walk happens in one ``process()`` call.
* ``offset``: project search ``POST /{ws}/{proj}/search`` pages of 250; the restriction is the page
  range, split up front so pages are read in parallel. Roboflow's offset order is unstable
  (roboflow-python #418: duplicates and misses), so ids are de-duplicated and the distinct count is
  reconciled with ``total`` in the summary.
* ``auto`` (default): the offset pages in parallel, then a check: when fewer distinct ids came back
  than Roboflow counted, or a page was lost, one token walk completes the listing. The usual case
  costs one call per 250 images and no sequential walk (the next stage waits for the whole
  listing, so a 5,000-image walk would delay the first row by its 50 pages); an unstable order
  costs one walk more and loses nothing.

    ids = (p | beam.Create([spec]) | ListImages(roboflow_config))

Filters (``--split``, ``--tag``, ``--class_name``, raw RoboQL ``--query``) are applied by Roboflow at
listing: :func:`selection_query` builds the RoboQL of the token listing, :func:`selection_body` the
body keys of the offset listing. :func:`fetch_page` reads one page either way; the Beam step and
``--plan`` (a plain loop, :func:`iter_pages`) share it.

Each listed id travels as a :class:`ListedImage` with the fingerprint of its listing summary
(transforms/core/listing_summary.py), which ``--change_detection listing`` compares with the stored
one. An image listed twice with different summaries (it changed while being listed) keeps no
fingerprint, so its details are fetched.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import DoFn, RestrictionProvider

from transforms.batch_step import DEAD_LETTER, LeasingDoFn, ThrottlingReport, counted
from transforms.clients.listing import ListingSpec, agreed, fetch_page, listed_images
from transforms.clients.resources import RoboflowConfig, roboflow_client
from transforms.clients.roboflow import RoboflowClient, SearchPage
from transforms.core.records import DeadLetter, ImportContext, ListedImage
from transforms.core.tally import count

LOST_PAGE = "lost_page"  # auto listing: an offset page that failed; the completing walk covers it


class ListImageIdsFn(LeasingDoFn, RestrictionProvider):
    """Emits raw listed images (duplicates possible in offset mode) and dead letters for lost pages."""

    def __init__(self, roboflow: RoboflowConfig, context: ImportContext | None = None):
        self.roboflow = roboflow
        self.context = context

    # ---- RestrictionProvider ----
    def initial_restriction(self, spec: ListingSpec) -> OffsetRange:
        return OffsetRange(0, spec.page_count())

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, spec: ListingSpec, restriction: OffsetRange):
        if spec.mode != "token":
            yield from restriction.split(spec.pages_per_split)
        else:
            yield restriction

    def restriction_size(self, spec: ListingSpec, restriction: OffsetRange) -> int:
        return restriction.size()

    # ---- DoFn ----
    def setup(self) -> None:
        self._client = self.lease(roboflow_client(self.roboflow))
        self._throttling = ThrottlingReport()

    def process(self, spec: ListingSpec, tracker=DoFn.RestrictionParam()):
        page = tracker.current_restriction().start
        while tracker.try_claim(page):
            if spec.mode == "token":
                yield from walk_tokens(self._client, spec, self._throttling, self.context)
            else:
                yield from self._read_offset_page(spec, page)
            page += 1

    def _read_offset_page(self, spec: ListingSpec, page: int):
        result = _fetch_counted(self._client, spec, self._throttling, page=page)
        if isinstance(result, Exception):
            if spec.mode == "auto":  # the completing walk will read what this page held
                count("list_offset_pages_lost")
                yield beam.pvalue.TaggedOutput(LOST_PAGE, page)
            else:
                yield _lost_page(f"offset:{page * spec.page_size}", result)
            return
        yield from listed_images(result, self.context)


def _fetch_counted(client: RoboflowClient, spec: ListingSpec, throttling: ThrottlingReport, *, page: int = 0,
                   token: str | None = None) -> SearchPage | Exception:
    """One page with its retries, waits and page counters in Beam metrics; the error instead of raising it."""
    with counted(throttling):
        try:
            result = fetch_page(client, spec, page=page, token=token)
        except Exception as exc:
            result = exc
    if not isinstance(result, Exception):
        count("list_pages")
        count("list_ids_raw", len(result.ids))
    return result


def walk_tokens(client: RoboflowClient, spec: ListingSpec, throttling: ThrottlingReport,
                context: ImportContext | None = None):
    """Every image of the token listing; a failed page ends the walk with a dead letter."""
    token = None
    spec = dataclasses.replace(spec, mode="token")
    while True:
        result = _fetch_counted(client, spec, throttling, token=token)
        if isinstance(result, Exception):
            yield _lost_page("token-walk", result)
            return
        yield from listed_images(result, context)
        if not result.ids or not result.continuation_token:
            return
        token = result.continuation_token


DISTINCT_IDS, LOST_PAGES = "distinct_ids", "lost_pages"  # the listing's tallies, keys of one side input


class CompleteListingFn(LeasingDoFn):
    """``auto`` listing: a token walk when the parallel offset pages came back short, else nothing."""

    def __init__(self, roboflow: RoboflowConfig, context: ImportContext | None = None):
        self.roboflow = roboflow
        self.context = context

    def setup(self) -> None:
        self._client = self.lease(roboflow_client(self.roboflow))
        self._throttling = ThrottlingReport()

    def process(self, spec: ListingSpec, tallies: dict[str, int]):
        if not needs_token_walk(spec, tallies.get(DISTINCT_IDS, 0), tallies.get(LOST_PAGES, 0)):
            return
        count("list_completing_walks")
        yield from walk_tokens(self._client, spec, self._throttling, self.context)


def needs_token_walk(spec: ListingSpec, distinct_ids: int, lost_pages: int) -> bool:
    """The offset pages saw every image only if none was lost and they found as many as Roboflow counts."""
    return spec.mode == "auto" and (lost_pages > 0 or distinct_ids < spec.total)


def _lost_page(where: str, error: Exception) -> beam.pvalue.TaggedOutput:
    count("list_pages_failed")
    return beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.of(f"page:{where}", "list", error))


class DistinctImages(beam.PTransform):
    """ListedImage -> one per image id (the offset pages repeat ids; summaries may disagree)."""

    def expand(self, images):
        return (images
                | "ById" >> beam.Map(lambda item: (item.image_id, item))
                | "GroupById" >> beam.GroupByKey()
                | "Agreed" >> beam.MapTuple(lambda _, items: agreed(list(items))))


class ListImages(beam.PTransform):
    """ListingSpec -> distinct :class:`ListedImage` (``ok``) and lost pages (``dead_letter``: the pages' and
    the completing walk's letters, two streams for the pipeline to flatten with the others)."""

    def __init__(self, roboflow: RoboflowConfig, context: ImportContext | None = None):
        super().__init__()
        self.roboflow = roboflow
        self.context = context

    def expand(self, specs):
        listed = specs | "ReadPages" >> beam.ParDo(ListImageIdsFn(self.roboflow, self.context)).with_outputs(
            DEAD_LETTER, LOST_PAGE, main="ok")
        paged = listed.ok | "Distinct" >> DistinctImages()
        # Both counts in one combine, a dict side input: as two Count.Globally singletons they made the
        # FnApiRunner run 11 stages before the details instead of 9, and reach them 0.4 s later (2.57 s
        # against 2.19 s after the run's start line, three paired runs of 2,000 images).
        tallies = (
            (paged | "TallyPaged" >> beam.Map(lambda _: (DISTINCT_IDS, 1)),
             listed[LOST_PAGE] | "TallyLost" >> beam.Map(lambda _: (LOST_PAGES, 1)))
            | "Tallies" >> beam.Flatten()
            | "CountTallies" >> beam.CombinePerKey(sum)
        )
        completed = (
            specs
            | "CompleteListing" >> beam.ParDo(CompleteListingFn(self.roboflow, self.context),
                                              tallies=beam.pvalue.AsDict(tallies)).with_outputs(DEAD_LETTER, main="ok")
        )
        distinct = (
            (paged, completed.ok)
            | "WithWalk" >> beam.Flatten()
            | "DistinctAll" >> DistinctImages()
            | "CountListed" >> beam.Map(count_listed)
        )
        return {"ok": distinct, DEAD_LETTER: (listed[DEAD_LETTER], completed[DEAD_LETTER])}


def count_listed(image: ListedImage) -> ListedImage:
    count("images_listed")
    return image
