"""FetchDetailsFn starts a batch's details calls before it hands the previous batch on (LOOK_AHEAD),
so a worker thread keeps calling Roboflow while the steps after it upload and write."""

import threading

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue

from transforms.batch_step import DEAD_LETTER, BatchStepFn, run_batch_step
from transforms.clients.resources import RoboflowConfig
from transforms.core.records import ImportContext, ListedImage
from transforms.core.secrets import SecretRef
from transforms.fetch_details import FetchDetailsFn

ROBOFLOW = RoboflowConfig("http://127.0.0.1:9", SecretRef(env_var="ROBOFLOW_API_KEY"), rate_limit=10.0)
CONTEXT = ImportContext("dataset", "ws", "project", 1, "bucket", {})


class FakeFetch(FetchDetailsFn):
    """Details are the id upper-cased; ids starting with "bad" fail the way a 404 would."""

    def setup(self) -> None:
        BatchStepFn.setup(self)  # the pool only: no client to lease, no stored links to read
        self._supabase = None

    def fetch(self, item: ListedImage) -> str:
        if item.image_id.startswith("bad"):
            raise LookupError(f"no image {item.image_id}")
        return item.image_id.upper()


def started_fn(fn: FetchDetailsFn) -> FetchDetailsFn:
    fn.setup()
    fn.start_bundle()
    return fn


def test_every_batch_comes_out_once_the_last_from_finish_bundle_with_its_dead_letters():
    batches = [["a1", "a2"], ["b1", "bad_b2"], ["c1", "bad_c2", "c3"]]
    with BeamTestPipeline(runner="FnApiRunner") as p:
        out = run_batch_step(p | beam.Create(batches), FakeFetch(ROBOFLOW, CONTEXT, 2))
        assert_that(out["ok"] | "Sorted" >> beam.Map(sorted), equal_to([["A1", "A2"], ["B1"], ["C1", "C3"]]))
        assert_that(out[DEAD_LETTER] | beam.Flatten() | beam.Map(lambda letter: (letter.image_id, letter.error_type)),
                    equal_to([("bad_b2", "LookupError"), ("bad_c2", "LookupError")]), label="letters")


def test_the_next_batch_is_being_fetched_while_the_previous_one_is_handed_on():
    second_started = threading.Event()
    overlapped = []

    class Overlapping(FakeFetch):
        def fetch(self, item: ListedImage) -> str:
            if item.image_id.startswith("second"):
                second_started.set()
            else:  # a first-batch call still under way when the second batch's calls begin
                overlapped.append(second_started.wait(5.0))
            return item.image_id

    fn = started_fn(Overlapping(ROBOFLOW, CONTEXT, 4))
    try:
        assert list(fn.process(["first1", "first2"])) == []  # held until the next batch has started
        handed_on = list(fn.process(["second1", "second2"]))
        assert handed_on == [["first1", "first2"]]
        assert overlapped == [True, True]
        last = list(fn.finish_bundle())
        assert [(type(v), v.value) for v in last] == [(WindowedValue, ["second1", "second2"])]
    finally:
        fn.teardown()


def test_finish_bundle_tags_the_held_batch_dead_letters_and_windows_them():
    fn = started_fn(FakeFetch(ROBOFLOW, CONTEXT, 2))
    try:
        assert list(fn.process(["bad1", "ok1"])) == []
        out = list(fn.finish_bundle())
        tagged = [o for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
        assert [(o.tag, o.value.value.image_id) for o in tagged] == [(DEAD_LETTER, "bad1")]
        assert isinstance(tagged[0].value, WindowedValue)
        assert [o.value for o in out if isinstance(o, WindowedValue)] == [["OK1"]]
        assert list(fn.finish_bundle()) == []  # nothing is handed on twice
    finally:
        fn.teardown()


def test_a_held_batch_that_cannot_be_collected_ends_in_the_dead_letters_whole():
    fn = started_fn(FakeFetch(ROBOFLOW, CONTEXT, 2))

    def broken(started):
        raise RuntimeError("a bug while collecting")

    try:
        list(fn.process(["x1", "x2"]))
        fn.results = broken
        out = list(fn.process(["y1"]))
        assert sorted(o.value.image_id for o in out) == ["x1", "x2"]
        assert {(o.tag, o.value.step) for o in out} == {(DEAD_LETTER, "fetch_details")}
        assert "a bug while collecting" in out[0].value.message
    finally:
        fn.teardown()
