"""Counting, one way, from any thread: :func:`count`.

Beam's ``Metrics.counter(...).inc()`` records into the calling thread's state sampler, so an
increment from a thread-pool thread is silently dropped. So :func:`count` adds to the tally of the
task running on this thread when there is one (:func:`collecting`; the step folds the tally into
Beam counters from its DoFn thread), and otherwise hands the count straight to the process's
publisher: Beam counters and the progress tracker, installed by the step layer
(transforms/batch_step.py), which keeps this module and the clients free of Beam.

    with collecting() as tally:
        client.image_details(ws, proj, image_id)   # calls count("retry.roboflow.rate_limited") on a 429
    tally.counts  # {"retry.roboflow.rate_limited": 1, ...}
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator

_local = threading.local()
_publisher: Callable[[str, float], None] | None = None


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()


def set_publisher(publisher: Callable[[str, float], None] | None) -> None:
    """Where counts made outside any task go (the step layer's Beam counters); None drops them."""
    global _publisher
    _publisher = publisher


def count(name: str, n: int | float = 1) -> None:
    """Count ``n`` of ``name`` for the run: into this thread's task tally, or straight to the publisher."""
    if not n:
        return
    tally = getattr(_local, "tally", None)
    if tally is not None:
        tally.counts[name] += n
    elif _publisher is not None:
        _publisher(name, n)


@contextlib.contextmanager
def collecting() -> Iterator[Tally]:
    previous = getattr(_local, "tally", None)
    tally = Tally()
    _local.tally = tally
    try:
        yield tally
    finally:
        _local.tally = previous
