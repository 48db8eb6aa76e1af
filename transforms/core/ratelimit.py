"""A token bucket shared by every thread of a worker, adapting to 429s and ``Retry-After``.

Roboflow's limit is per key. With ``rate`` given (``--roboflow_rate_limit`` divided among
workers) the bucket never exceeds it and only slows down when told to; with ``rate=None`` it
starts high and searches for the limit: multiplicative decrease on each 429, additive increase
while requests succeed. A ``Retry-After`` pauses every thread until that moment.

    limiter = AdaptiveRateLimiter(rate=100)
    limiter.acquire()          # blocks until a token is free; returns seconds waited
    limiter.on_throttled(2.0)  # a 429 said Retry-After: 2
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float | None = None,
        *,
        initial_rate: float = 200.0,
        min_rate: float = 0.5,
        decrease: float = 0.85,
        increase_per_second: float = 0.02,
        burst_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.max_rate = rate
        self.rate = float(rate if rate is not None else initial_rate)
        self.min_rate = min_rate
        self.decrease = decrease
        self.increase_per_second = increase_per_second
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 1.0
        self._last = clock()
        self._paused_until = 0.0
        self._last_cut = float("-inf")
        self.throttled_seconds = 0.0
        self.throttle_events = 0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.burst_seconds)

    def _refill(self, now: float, grow: bool = True) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        if grow and (self.max_rate is None or self.rate < self.max_rate):
            grown = self.rate * (1 + self.increase_per_second * elapsed)
            self.rate = grown if self.max_rate is None else min(self.max_rate, grown)

    def acquire(self) -> float:
        """Take one token, sleeping as needed. Returns the seconds spent waiting."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    wait = self._paused_until - now
                elif self._tokens >= 1.0 - 1e-9:
                    self._tokens -= 1.0
                    return waited
                else:
                    wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)
            waited += wait

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429: slow down once per burst of 429s, and pause everyone for ``Retry-After``."""
        with self._lock:
            now = self._clock()
            self._refill(now, grow=False)
            self.throttle_events += 1
            if now - self._last_cut > 1.0 / max(self.rate, self.min_rate) * 10:
                self.rate = max(self.min_rate, self.rate * self.decrease)
                self._last_cut = now
                self._tokens = min(self._tokens, 0.0)
            if retry_after:
                until = now + retry_after
                if until > self._paused_until:
                    self.throttled_seconds += until - max(now, self._paused_until)
                    self._paused_until = until
