"""Per-task counts gathered in worker threads and folded into Beam counters by the DoFn thread.

Beam's ``Metrics.counter(...).inc()`` records into the calling thread's state sampler, so an
increment from a thread-pool thread is silently dropped. Clients call :func:`count` instead; the
step runs each task under :func:`collecting` and increments the Beam counters itself.

    with collecting() as tally:
        client.image_details(ws, proj, image_id)   # calls count("retry.roboflow.rate_limited") on a 429
    tally.counts  # {"retry.roboflow.rate_limited": 1, ...}
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

_local = threading.local()


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()


def count(name: str, n: int | float = 1) -> None:
    """Add ``n`` to ``name`` in the tally of the task running on this thread, if any."""
    tally = getattr(_local, "tally", None)
    if tally is not None:
        tally.counts[name] += n


@contextlib.contextmanager
def collecting() -> Iterator[Tally]:
    previous = getattr(_local, "tally", None)
    tally = Tally()
    _local.tally = tally
    try:
        yield tally
    finally:
        _local.tally = previous
