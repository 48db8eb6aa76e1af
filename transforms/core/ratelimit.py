"""A token bucket shared by every thread of a worker that finds and keeps under a rate limit.

Roboflow's limit is per key. With ``rate`` given (``--roboflow_rate_limit``, divided among worker
processes) the bucket never exceeds it; with ``rate=None`` it starts at ``initial_rate`` and
searches. Either way it watches the share of 429 answers per window (``window`` seconds and at least
``min_samples`` requests) and compares it with a *noise floor* of 429s that are not its fault:

* more 429s than the floor (plus ``tolerance``): cut the rate by the excess (at most by half);
* if fewer requests got through in the window after a cut than before it, the cut did not help:
  those 429s do not depend on the rate (a flaky proxy, the emulator's random faults), so their share
  becomes the floor and the cut is undone. Against a real limit the accepted rate stays the same
  after a cut (the limit), only the share of 429s falls;
* otherwise, if the bucket held callers back during the window, grow by ``increase`` (up to ``rate``).

``Retry-After`` is honoured by the retry of the request that got it (see ``retry.py``), not by
freezing every thread.

    limiter = AdaptiveRateLimiter(rate=100)
    limiter.acquire()          # blocks until a token is free; returns seconds waited
    limiter.on_throttled()     # the request got a 429
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable

DEFAULT_STALL_TIMEOUT = 600.0


class StallWatch:
    """Whether the run is stalled on rate limiting: calls kept going out for ``timeout`` seconds and
    none succeeded. One per client (so per process), shared by its threads: a 429 is waited out for
    as long as *some* call gets through, and once none has for ``timeout`` every waiting call gives
    up together instead of each spending its own budget. A gap with no calls at all (between two
    imports of one process) is idleness, not a stall."""

    def __init__(self, timeout: float = DEFAULT_STALL_TIMEOUT, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        self._announced = False

    def attempt(self) -> None:
        now = self._clock()
        with self._lock:
            if self._last_attempt is None or now - self._last_attempt > self.timeout:
                self._last_success = now
            self._last_attempt = now

    def success(self) -> None:
        with self._lock:
            self._last_success = self._clock()

    def stalled(self) -> bool:
        with self._lock:
            return self._last_success is not None and self._clock() - self._last_success > self.timeout

    def first_report(self) -> bool:
        """True exactly once per stall: the caller logs the one line saying the run stops."""
        with self._lock:
            first, self._announced = not self._announced, True
            return first


def in_flight_gate(max_in_flight: int | None) -> contextlib.AbstractContextManager:
    """A ``with`` gate letting at most ``max_in_flight`` requests through at once (None: no gate)."""
    return threading.BoundedSemaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float | None = None,
        *,
        initial_rate: float = 200.0,
        min_rate: float = 0.5,
        window: float = 1.0,
        min_samples: int = 20,
        tolerance: float = 0.05,
        increase: float = 1.1,
        floor_smoothing: float = 0.2,
        burst_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.max_rate = rate
        self.rate = float(rate if rate is not None else initial_rate)
        self.min_rate = min_rate
        self.window = window
        self.min_samples = min_samples
        self.tolerance = tolerance
        self.increase = increase
        self.floor_smoothing = floor_smoothing
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        now = clock()
        self._tokens = 1.0
        self._last = now
        self._window_start = now
        self._requests = 0
        self._throttled = 0
        self._held_back = False
        self.floor = 0.0
        self._last_cut: tuple[float, float] | None = None  # (rate before the cut, accepted/s before it)
        self.throttle_events = 0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.burst_seconds)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)

    def _threshold(self) -> float:
        """How far above the floor a window's share must be to mean something: three standard
        deviations of a share measured on this many requests, and at least ``tolerance``."""
        p = min(max(self.floor, 0.02), 0.98)
        return max(self.tolerance, 3.0 * math.sqrt(p * (1.0 - p) / self._requests))

    def _close_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed < self.window or self._requests < self.min_samples:
            return
        share = self._throttled / self._requests
        accepted = self._requests * (1.0 - share) / elapsed
        threshold = self._threshold()
        last_cut, self._last_cut = self._last_cut, None
        if last_cut is not None and share > self.floor + threshold and accepted < last_cut[1] * 0.85:
            # Fewer answers got through after the cut: the 429s were not about our rate.
            self.floor = share
            self.rate = last_cut[0]
        elif share > self.floor + threshold:
            self._last_cut = (self.rate, accepted)
            self.rate = max(self.min_rate, self.rate * max(0.5, 1.0 - (share - self.floor)))
            self._tokens = min(self._tokens, 0.0)
        else:
            if share < self.floor:  # the floor only rises on evidence (above); it decays as 429s fade
                self.floor += self.floor_smoothing * (share - self.floor)
            if self._held_back:
                grown = self.rate * self.increase
                self.rate = grown if self.max_rate is None else min(self.max_rate, grown)
        self._window_start = now
        self._requests = self._throttled = 0
        self._held_back = False

    def acquire(self) -> float:
        """Take one token, sleeping as needed. Returns the seconds spent waiting.

        A caller that finds no token reserves the next one (the bucket goes into debt) and sleeps once
        until it is due. Polling instead would wake every waiting thread at every token: with dozens of
        request threads that herd cost a whole core. The request is counted for the window when it is
        sent, not when reserved: the controller judges a cut by the requests that went out after it.
        """
        waited = 0.0
        while True:
            with self._lock:
                self._refill(self._clock())
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens -= 1.0
                    wait, reserved = 0.0, True
                else:
                    self._held_back = True
                    wait = (1.0 - self._tokens) / self.rate
                    # Reserve only up to one window ahead: a cut must show in the next window's sends.
                    reserved = -self._tokens < self.rate * self.window
                    if reserved:
                        self._tokens -= 1.0
            if wait:
                self._sleep(wait)
                waited += wait
            if reserved:
                break
        with self._lock:
            self._close_window(self._clock())
            self._requests += 1
        return waited

    def on_throttled(self, retry_after: float | None = None) -> None:
        """Count a 429 for this window. ``retry_after`` is the retrying caller's to honour."""
        with self._lock:
            self.throttle_events += 1
            self._throttled += 1
            self._close_window(self._clock())
