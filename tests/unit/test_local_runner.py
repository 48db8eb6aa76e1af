"""The local runner spreads only the named steps' stages over its workers and runs the rest on one."""

import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

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
    assert runner.spreads(["ListImages/ReadPages/ParDo(ListImageIdsFn)/Process"])
    assert not runner.spreads(["ListImages/Distinct/GroupById/Read", "ListImages/Distinct/Agreed"])
    assert not runner.spreads(["ListImages/CompleteListing/ParDo(CompleteListingFn)"])
    assert not runner.spreads(["WriteDeadLetters/Gather/Read", "WriteDeadLetters/WriteFile"])
