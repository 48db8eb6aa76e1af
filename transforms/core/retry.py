"""Bounded retries with full-jitter exponential backoff that honours ``Retry-After``.

Clients raise :class:`TransientError` for what may heal (429, 5xx, resets, truncated bodies) and any
other exception for what will not. :func:`call_with_retries` retries the first kind within a budget
of attempts *and* seconds, so a 20 s outage is waited out while a dead service ends in a dead
letter instead of a hang.

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
) -> T:
    """Call ``fn`` until it succeeds, raises a non-transient error, or the budget is spent.

    The exception that ends the attempts gets an ``attempts`` attribute for the dead letter.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except TransientError as exc:
            exc.attempts = attempt
            delay = policy.delay(attempt - 1, exc.retry_after)
            if attempt >= policy.max_attempts or clock() - start + delay > policy.max_elapsed:
                raise
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            sleep(delay)
        except Exception as exc:
            exc.attempts = attempt
            raise
