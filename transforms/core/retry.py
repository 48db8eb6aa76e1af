"""Bounded retries with full-jitter exponential backoff that honours ``Retry-After``.

Clients raise :class:`TransientError` for what may heal (5xx, resets, truncated bodies) and any
other exception for what will not. :func:`call_with_retries` retries the first kind within a budget
of attempts *and* seconds, so a 20 s outage is waited out while a dead service ends in a dead
letter instead of a hang.

A :class:`RateLimited` answer (429) is different: it says "later", not "broken", so it is waited out
without spending that budget (8 attempts turned a plain rate-limit wait into lost images). What ends
a rate-limit wait is the caller's ``stalled()``: the whole run has had no successful call for a long
time (``--roboflow_stall_timeout``), judged across every thread, never per request.

    policy = RetryPolicy(max_attempts=8, max_elapsed=120)
    body = call_with_retries(lambda: client.get(url), policy)
"""

from __future__ import annotations

import dataclasses
import email.utils
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying. ``kind`` names it for counters and dead letters."""

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.status = status


class RateLimited(TransientError):
    """A 429: waited out outside the attempt budget (see the module docstring)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__("rate_limited", message, retry_after=retry_after, status=429)


class PermanentError(Exception):
    """A failure retrying cannot fix (404, 413, bad bytes, constraint violations)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 15.0
    max_elapsed: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)], at least ``Retry-After``."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_delay * 4))
        return backoff

    def rate_limit_delay(self, waits: int, retry_after: float | None) -> float:
        """After the ``waits``-th 429 of one call. ``Retry-After`` plus up to half of it again (at
        least 0.5 s) of jitter: dozens of threads told "Retry-After: 1" at once come back spread over
        that extra time, not in the same millisecond (and then each still waits for a token). Without
        it, full jitter as for other faults, capped at ``max_delay`` however long the wait lasts."""
        if retry_after is not None:
            base = min(retry_after, self.max_delay * 4)
            return base + random.uniform(0, max(0.5, base / 2))
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** min(waits, 16))))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[TransientError, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stalled: Callable[[], bool] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, raises a non-transient error, or the budget is spent.

    :class:`RateLimited` errors are retried until ``stalled()`` says the run has stalled (None: never
    give up on them); neither their attempts nor their waiting count against ``policy``'s budget.
    The exception that ends the attempts gets an ``attempts`` attribute for the dead letter.
    """
    start = clock()
    attempt = 0
    budgeted = 0  # attempts that ended in something other than a 429
    waited_out = 0.0  # seconds spent on 429s (the call and the wait after it), not charged to max_elapsed
    while True:
        attempt += 1
        began = clock()
        try:
            return fn()
        except RateLimited as exc:
            exc.attempts = attempt
            if stalled is not None and stalled():
                raise
            delay = policy.rate_limit_delay(attempt - budgeted - 1, exc.retry_after)
            waited_out += clock() - began + delay
            error = exc
        except TransientError as exc:
            exc.attempts = attempt
            budgeted += 1
            delay = policy.delay(budgeted - 1, exc.retry_after)
            if budgeted >= policy.max_attempts or clock() - start - waited_out + delay > policy.max_elapsed:
                raise
            error = exc
        except Exception as exc:
            exc.attempts = attempt
            raise
        if on_retry is not None:
            on_retry(error, attempt, delay)
        sleep(delay)
