"""The splittable listing's restrictions, and batching with several workers losing nothing."""

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from transforms.batch_images import BatchImages, batches_of, shard_of
from transforms.batch_step import ThrottlingReport
from transforms.clients.listing import ListingSpec
from transforms.clients.resources import RoboflowConfig
from transforms.clients.roboflow import SearchPage
from transforms.core.secrets import SecretRef
from transforms.list_images import DISTINCT_IDS, LOST_PAGES, CompleteListingFn, ListImageIdsFn, needs_token_walk

CONFIG = RoboflowConfig("http://127.0.0.1:9", SecretRef(env_var="UNUSED_KEY"))


def test_offset_listing_splits_pages_for_parallel_reads():
    spec = ListingSpec("ws", "proj", total=1000, mode="offset", page_size=250)
    fn = ListImageIdsFn(CONFIG)
    restriction = fn.initial_restriction(spec)
    assert (restriction.start, restriction.stop) == (0, 5)  # 4 pages for 1000 ids, plus one for growth
    splits = list(fn.split(spec, restriction))
    assert [(s.start, s.stop) for s in splits] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert sum(fn.restriction_size(spec, s) for s in splits) == 5


@pytest.mark.parametrize(("distinct_ids", "lost_pages", "mode", "walk"), [
    (1000, 0, "auto", False),  # the pages found every counted image
    (1200, 0, "auto", False),  # more than counted: images added since the count, nothing missed
    (999, 0, "auto", True),  # unstable order or deletions: the walk finds what the pages missed
    (1000, 1, "auto", True),  # a page failed for good: the walk reads what it held
    (999, 0, "offset", False),  # offset mode reports misses instead
    (0, 0, "token", False),  # token mode is the walk already
])
def test_auto_listing_walks_only_when_the_pages_came_back_short(distinct_ids, lost_pages, mode, walk):
    spec = ListingSpec("ws", "proj", total=1000, mode=mode)
    assert needs_token_walk(spec, distinct_ids, lost_pages) is walk


class WalkingClient:
    """A Roboflow client whose token walk is one page of one image; it counts the pages asked for."""

    def __init__(self):
        self.pages = 0

    def search_v1_page(self, workspace, query, *, page_size, token=None):
        self.pages += 1
        return SearchPage(["walked"], 1)


@pytest.mark.parametrize(("tallies", "walks"), [
    ({DISTINCT_IDS: 1000}, 0),  # every counted image paged, no page lost: the combine has no lost_pages key
    ({DISTINCT_IDS: 999}, 1),
    ({DISTINCT_IDS: 1000, LOST_PAGES: 1}, 1),
    ({}, 1),  # no page came back with an image
])
def test_the_listings_tallies_decide_the_completing_walk(tallies, walks):
    """The pages' counts reach ``CompleteListingFn`` as one side input (a dict of tallies, keys only for
    what was counted), not two Count.Globally singletons, which cost the runner two more stages."""
    fn = CompleteListingFn(CONFIG)
    fn._client, fn._throttling = WalkingClient(), ThrottlingReport()
    images = list(fn.process(ListingSpec("ws", "proj", total=1000, mode="auto"), tallies))
    assert fn._client.pages == walks
    assert [image.image_id for image in images] == ["walked"] * walks


def test_token_listing_is_one_unclaimed_unit():
    spec = ListingSpec("ws", "proj", total=10_000, mode="token")
    fn = ListImageIdsFn(CONFIG)
    restriction = fn.initial_restriction(spec)
    assert list(fn.split(spec, restriction)) == [restriction]
    tracker = fn.create_tracker(restriction)
    assert tracker.try_claim(0) and not tracker.try_claim(1)
    tracker.check_done()


def test_tracker_checkpoint_keeps_the_unread_pages():
    tracker = OffsetRestrictionTracker(OffsetRange(0, 10))
    assert tracker.try_claim(0)
    primary, residual = tracker.try_split(0)
    assert (primary.stop, residual.start, residual.stop) == (1, 1, 10)


def test_roboql_scopes_the_project_inside_the_query():
    assert ListingSpec("ws", "my-proj", 1).roboql() == "project:my-proj *"
    assert ListingSpec("ws", "my-proj", 1, query="split:train").roboql() == "project:my-proj split:train"


def test_shard_keys_are_stable_and_spread():
    ids = [f"img{i:05d}" for i in range(2000)]
    shards = [shard_of(i, 16) for i in ids]
    assert shards == [shard_of(i, 16) for i in ids]
    counts = [shards.count(s) for s in range(16)]
    assert min(counts) > 2000 / 16 * 0.6


def test_a_shards_batches_are_full_sorted_and_the_same_whatever_order_the_ids_came_in():
    ids = [f"img{i:03d}" for i in range(123)]
    batches = list(batches_of(reversed(ids), 50))
    assert [len(b) for b in batches] == [50, 50, 23]
    assert [i for b in batches for i in b] == ids
    assert list(batches_of(ids[::7] + [i for n, i in enumerate(ids) if n % 7], 50)) == batches


def test_batching_with_four_workers_loses_and_duplicates_nothing():
    ids = [f"img{i:05d}" for i in range(2003)]
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=4",
                               "--direct_running_mode=multi_threading"])
    with beam.Pipeline(options=options) as p:
        batches = p | beam.Create(ids) | BatchImages(batch_size=50, shards=8)
        assert_that(batches | "Flatten" >> beam.FlatMap(lambda b: b), equal_to(ids), label="every id once")
        assert_that(batches | "Sizes" >> beam.Map(lambda b: 0 < len(b) <= 50) | beam.Distinct(),
                    equal_to([True]), label="batch sizes")
