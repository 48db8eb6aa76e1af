"""What every batch step shares: a per-process thread pool, per-image dead letters, counters.

Steps receive a batch (a list of up to ``--batch_size`` items), run one task per item on a pool
shared by all DoFn instances of the worker process (so ``--concurrency`` bounds the process's
in-flight requests), and yield the batch of successes as one element plus one ``dead_letter``
tagged output per failed image. A failure of one image never takes its batch-mates down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import apache_beam as beam
from apache_beam.io.components.adaptive_throttler import ThrottlingSignaler
from apache_beam.metrics import Metrics

from transforms.clients.roboflow import RoboflowStopped
from transforms.core.records import DeadLetter
from transforms.core.shared import PROCESS_SHARED, Lease
from transforms.core.tally import Tally, collecting, count, set_publisher

DEAD_LETTER = "dead_letter"
NAMESPACE = "roboflow_import"
# Tasks per allowed in-flight request: a task sleeping in back-off holds a thread, not a request slot
# (the clients' gates bound requests to --concurrency).
POOL_PER_REQUEST = 4

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# The local run's progress tracker (pipeline/progress.py) when one is installed in this process.
_progress_sink: Callable[[str, int], None] | None = None


def set_progress_sink(sink: Callable[[str, int], None] | None) -> None:
    """Mirror the image counters into ``sink(name, n)`` in this process (None: stop)."""
    global _progress_sink
    _progress_sink = sink


def _publish(name: str, n: float) -> None:
    """A count made on a DoFn thread: a Beam counter of the importer, and the progress tracker if there is one."""
    if not int(n):
        return
    Metrics.counter(NAMESPACE, name).inc(int(n))
    sink = _progress_sink
    if sink is not None:
        sink(name, int(n))


set_publisher(_publish)


# The pools serve tasks first in, first out. Were the batches of several DoFn threads interleaved in
# the queue, they would all advance together and all finish late: the first row would wait for every
# worker's first batch (measured: 16 first batches done between 1.9 s and 6.6 s into the stage).
_submit_lock = threading.Lock()


def step_pool(step: str, concurrency: int) -> Lease[ThreadPoolExecutor]:
    """A lease on the process's thread pool for ``step`` (transforms/core/shared.py says why a lease)."""
    return PROCESS_SHARED.lease(
        ("pool", step, concurrency),
        make=lambda: ThreadPoolExecutor(concurrency * POOL_PER_REQUEST, thread_name_prefix=step),
        close=lambda pool: pool.shutdown(wait=False))


class LeasingDoFn(beam.DoFn):
    """A DoFn whose ``setup()`` leases per-process resources and whose ``teardown()`` gives them back."""

    def lease(self, lease: Lease[T]) -> T:
        self.__dict__.setdefault("_leases", []).append(lease)
        return lease.value

    def teardown(self) -> None:
        for lease in reversed(self.__dict__.pop("_leases", [])):  # what was leased last may use the others
            lease.release()


class ThrottlingReport:
    """Time spent waiting for Roboflow (rate limit, 429 back-off), for Dataflow's autoscaler.

    Beam's ``ThrottlingSignaler`` increments ``cumulativeThrottlingSeconds``, the counter Beam's own
    IOs use to tell the runner that more workers would only wait. It takes whole seconds and most waits
    are fractions, so the remainder is carried instead of rounding every short wait down to nothing.
    One per DoFn instance (a DoFn instance runs on one thread at a time).
    """

    def __init__(self) -> None:
        self._signaler = ThrottlingSignaler(NAMESPACE)
        self._carry = 0.0

    def add(self, seconds: float) -> None:
        self._carry += seconds
        whole = int(self._carry)
        if whole:
            self._signaler.signal_throttled(whole)
            self._carry -= whole


def fold_tally(tally: Tally, throttling: ThrottlingReport | None) -> None:
    """Turn a task's tally into Beam counters (from the DoFn thread, where counters work)."""
    for name, n in tally.counts.items():
        if name == "roboflow.throttled_seconds" and throttling is not None:
            throttling.add(n)
            name, n = "throttled_ms", n * 1000
        _publish(name, n)


@contextlib.contextmanager
def counted(throttling: ThrottlingReport | None = None) -> Iterator[None]:
    """Run a block that calls clients on this DoFn thread; what they counted becomes Beam counters."""
    with collecting() as tally:
        try:
            yield
        finally:
            fold_tally(tally, throttling)


class Started(Generic[T, R]):
    """A batch's tasks, submitted to the step's pool and not yet collected."""

    def __init__(self, items: list[T], futures: list[Future]):
        self.items = items
        self.futures = futures


class BatchStepFn(LeasingDoFn):
    """Base for the fetch, upload and write steps."""

    step = "step"

    def __init__(self, concurrency: int):
        self.concurrency = concurrency

    def setup(self) -> None:
        self._pool = self.lease(step_pool(self.step, self.concurrency))
        self._throttling = ThrottlingReport()

    def collect(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn`` on this thread, folding what its clients counted (retries) into counters."""
        with counted(self._throttling):
            return fn(*args)

    def start_each(self, items: Iterable[T], task: Callable[[T], R]) -> Started[T, R]:
        """Start ``task`` on every item concurrently; :meth:`results` waits for them."""

        def wrapped(item: T) -> tuple[R | None, Exception | None, Tally]:
            with collecting() as tally:
                try:
                    return task(item), None, tally
                except Exception as exc:  # every failure becomes a dead letter, never a lost batch
                    return None, exc, tally

        items = list(items)
        with _submit_lock:  # one batch's tasks queue together, so batches finish one after another
            futures = [self._pool.submit(wrapped, item) for item in items]
        return Started(items, futures)

    def results(self, started: Started[T, R]) -> list[tuple[T, R | None, Exception | None]]:
        """(item, result, error) of started tasks in input order, once all are done."""
        out = []
        for item, future in zip(started.items, started.futures, strict=True):
            result, error, tally = future.result()
            fold_tally(tally, self._throttling)
            out.append((item, result, error))
        return out

    def run_each(self, items: Iterable[T], task: Callable[[T], R]) -> list[tuple[T, R | None, Exception | None]]:
        """Run ``task`` on every item concurrently; return (item, result, error) in input order."""
        return self.results(self.start_each(items, task))

    def dead_letter(self, image_id: str, error: Exception | str) -> beam.pvalue.TaggedOutput:
        letter = DeadLetter.of(image_id, self.step, error)
        count(f"dead_letter.{self.step}.{letter.error_type}")
        count("images_failed")
        if not isinstance(error, RoboflowStopped):  # a stop gets one line for the run (pipeline/summary.py)
            log.warning("dead letter: image %s at %s: %s: %s", image_id, self.step, letter.error_type, letter.message)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


def image_id_of(item: Any) -> str:
    """The Roboflow image id of whatever a step carries (an id, details or a stored image)."""
    if isinstance(item, str):
        return item
    details = getattr(item, "details", item)
    return str(getattr(details, "image_id", item))


def crash_letters(failed: tuple[Any, tuple], step: str) -> list[DeadLetter]:
    """A batch whose ``process()`` raised (a bug, not an image's fault): one letter per image."""
    batch, (exc_type, exc_repr, _traceback) = failed
    items = batch if isinstance(batch, list) else [batch]
    return letters_for_crash(items, step, f"{getattr(exc_type, '__name__', str(exc_type))}: {exc_repr}")


def letters_for_crash(items: list[Any], step: str, reason: str) -> list[DeadLetter]:
    count(f"dead_letter.{step}.crash", len(items))
    count("images_failed", len(items))
    return [DeadLetter.of(image_id_of(item), step, reason) for item in items]


def run_batch_step(batches, fn: BatchStepFn):
    """ParDo with per-image dead letters, plus a backstop that turns a crashed batch into letters.

    ``DEAD_LETTER`` holds both streams of letters, not one: the pipeline flattens every step's streams
    once (transforms/dead_letters.py), since each Flatten costs the FnApiRunner a stage of its own."""
    result = batches | beam.ParDo(fn).with_outputs(DEAD_LETTER, main="ok").with_exception_handling(
        dead_letter_tag="crashed")
    crashed = result["crashed"] | "CrashLetters" >> beam.FlatMap(crash_letters, fn.step)
    return {"ok": result["ok"], DEAD_LETTER: (result[DEAD_LETTER], crashed)}
