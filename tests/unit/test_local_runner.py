"""The local runner spreads only the named steps' stages over its workers and runs the rest on one."""

import threading

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.core import RestrictionProvider

from pipeline.local_runner import LocalRunner
from pipeline.main import SPREAD_STEPS

THREADS: dict[str, set[int]] = {"Plain": set(), "Calls": set()}


def seen_by_plain(element):  # module functions pickle by reference: the records land in this THREADS
    THREADS["Plain"].add(threading.get_ident())
    return element


def seen_by_calls(element):
    THREADS["Calls"].add(threading.get_ident())
    return element


def test_only_the_named_steps_run_on_every_worker():
    options = PipelineOptions(["--direct_num_workers=4", "--direct_running_mode=multi_threading"])
    with beam.Pipeline(runner=LocalRunner(("Calls",)), options=options) as p:
        out = (p | beam.Create(range(400)) | "Apart" >> beam.Reshuffle() | "Plain" >> beam.Map(seen_by_plain)
               | "ApartAgain" >> beam.Reshuffle() | "Calls" >> beam.Map(seen_by_calls))
        assert_that(out, equal_to(list(range(400))))
    assert len(THREADS["Plain"]) == 1
    assert len(THREADS["Calls"]) == 4


def test_the_importers_service_steps_are_spread_and_its_plumbing_is_not():
    runner = LocalRunner(SPREAD_STEPS)
    assert runner.spreads(["BatchImages/GroupByShard/Read", "BatchImages/Batches", "FetchDetails/Fetch"])
    assert runner.spreads(["ref_PCollection_PCollection_3_split/Read", "ListImages/ReadPages/Process"])
    assert not runner.spreads(["Project/Impulse", "Project/Map(decode)", "ListImages/ReadPages/PairWithRestriction",
                               "ListImages/ReadPages/SplitAndSizeRestriction"])
    assert not runner.spreads(["ListImages/Distinct/GroupById/Read", "ListImages/Distinct/Agreed"])
    assert not runner.spreads(["ListImages/CompleteListing/ParDo(CompleteListingFn)"])
    assert not runner.spreads(["WriteDeadLetters/Gather/Read", "WriteDeadLetters/WriteFile"])


class Pages(beam.DoFn, RestrictionProvider):
    """A splittable DoFn like the listing's: one element in, one restriction per page."""

    def initial_restriction(self, pages):
        return OffsetRange(0, pages)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def split(self, pages, restriction):
        yield from restriction.split(1)

    def restriction_size(self, pages, restriction):
        return restriction.size()

    def process(self, pages, tracker=beam.DoFn.RestrictionParam()):
        page = tracker.current_restriction().start
        while tracker.try_claim(page):
            yield page
            page += 1


class DecisionsOf(LocalRunner):
    decisions: list[tuple[list[str], bool]] = []

    def _get_bundle_manager(self, bundle_context_manager):
        names = [transform.unique_name for transform in bundle_context_manager.stage.transforms]
        self.decisions.append((names, self.spreads(names)))
        return super()._get_bundle_manager(bundle_context_manager)


def test_a_splittable_dofns_pages_are_spread_and_the_split_of_its_one_input_is_not():
    options = PipelineOptions(["--direct_num_workers=4", "--direct_running_mode=multi_threading"])
    with beam.Pipeline(runner=DecisionsOf(("Read",)), options=options) as p:
        assert_that(p | beam.Create([6]) | "Read" >> beam.ParDo(Pages()), equal_to(list(range(6))))
    split = [spread for names, spread in DecisionsOf.decisions if "Read/SplitAndSizeRestriction" in names]
    pages = [spread for names, spread in DecisionsOf.decisions if "Read/Process" in names]
    assert split == [False] and pages == [True]
