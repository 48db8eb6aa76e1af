"""Runtime side of FaultConfig: the seeded dice, remaining counts, chosen images, rate-limit buckets."""

from __future__ import annotations

import hashlib
import random
import threading
import time

from .config import TRANSIENT_FAULTS, FaultConfig, expand_routes
from .dataset import Dataset

TARGETED_FAULTS = ("deleted_after_listing", "eventually_consistent", "undecodable", "count_gap")


class FaultState:
    """One FaultConfig in force. Replaced whole when faults change, so counts start over."""

    def __init__(self, config: FaultConfig, dataset: Dataset, default_seed: int):
        self.config = config
        self.seed = default_seed if config.seed is None else config.seed
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._remaining = {name: getattr(config, f"{name}_count") for name in TRANSIENT_FAULTS}
        self._routes = {
            name: expand_routes(getattr(config, f"{name}_routes"))
            for name in TRANSIENT_FAULTS
            if hasattr(config, f"{name}_routes")
        }
        self._error_style = {}
        for route_name, style in config.error_style.items():
            for route in expand_routes([route_name]):
                self._error_style[route] = style
        self._refusal_routes = expand_routes(config.account_refusal_routes)
        self._refusal_passed = 0
        self.targets = self._pick_targets(dataset)
        self.deleted_after_listing = frozenset(self.targets["deleted_after_listing"])
        self.undecodable = frozenset(self.targets["undecodable"])
        self.hidden = frozenset(self.targets["count_gap"])
        self._pending_404s = dict.fromkeys(self.targets["eventually_consistent"], config.eventual_tries)

    def _pick_targets(self, dataset: Dataset) -> dict[str, list[int]]:
        """Disjoint, seeded choices among live project images, so tests can ask which ones were hit."""
        wanted = {name: getattr(self.config, name) for name in TARGETED_FAULTS}
        live = dataset.live_indices()
        chosen = random.Random(f"{self.seed}:targets").sample(live, min(len(live), sum(wanted.values())))
        targets: dict[str, list[int]] = {}
        start = 0
        for name in TARGETED_FAULTS:
            targets[name] = sorted(chosen[start : start + wanted[name]])
            start += wanted[name]
        return targets

    def fires(self, name: str, route: str) -> bool:
        """Whether transient fault ``name`` hits this request: first the count, then the rate."""
        routes = self._routes.get(name)
        if routes is not None and route not in routes:
            return False
        rate = getattr(self.config, f"{name}_rate")
        with self._lock:
            if self._remaining[name] > 0:
                self._remaining[name] -= 1
                return True
            return rate > 0 and self._rng.random() < rate

    def account_refuses(self, route: str) -> bool:
        """Whether the account refusal answers this request: once ``account_refusal_after`` have passed, always."""
        if self.config.account_refusal_status is None or route not in self._refusal_routes:
            return False
        with self._lock:
            if self._refusal_passed < self.config.account_refusal_after:
                self._refusal_passed += 1
                return False
            return True

    def chance(self, probability: float) -> bool:
        with self._lock:
            return self._rng.random() < probability

    def choice(self, options):
        with self._lock:
            return self._rng.choice(options)

    def rng_for_request(self) -> random.Random:
        with self._lock:
            return random.Random(self._rng.getrandbits(64))

    def error_style(self, route: str, default: str) -> str:
        return self._error_style.get(route, default)

    def has_undefined_url(self, image_id: str) -> bool:
        """A fixed, seeded subset of images gets /undefined/ in urls.original (#256)."""
        rate = self.config.undefined_url_rate
        if rate <= 0:
            return False
        digest = hashlib.blake2b(f"{self.seed}:undefined:{image_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < rate

    def take_pending_404(self, index: int) -> bool:
        """True while an eventually consistent image still owes a 404; each call uses one up."""
        with self._lock:
            left = self._pending_404s.get(index, 0)
            if left <= 0:
                return False
            self._pending_404s[index] = left - 1
            return True


class TokenBuckets:
    """Per-key token buckets like an API gateway's: ``rate`` tokens/s, at most ``burst_s`` seconds of
    rate (or ``burst`` tokens) saved up. The rate can change to ``change_to`` after ``after_calls``
    calls or ``after_s`` seconds, the way a key's share moves when another client on it starts or stops.
    Every decision is also tallied per second (:meth:`timeline`) for the benchmark's pictures."""

    def __init__(self, rate: float, burst_s: float, burst: int | None = None, *, change_to: float | None = None,
                 after_calls: int | None = None, after_s: float | None = None):
        self.rate = rate
        self.burst_s = burst_s
        self.burst = burst
        self.change_to = change_to
        self.after_calls = after_calls
        self.after_s = after_s
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._calls = 0
        self._start: float | None = None
        self._seconds: dict[int, list[float]] = {}  # second -> [limit, answered, limited]

    def rate_at(self, now: float) -> float:
        if self.change_to is None or self._start is None:
            return self.rate
        if self.after_calls is not None and self._calls > self.after_calls:
            return self.change_to
        if self.after_s is not None and now - self._start >= self.after_s:
            return self.change_to
        return self.rate

    def take(self, key: str) -> float:
        """0 if the request may proceed, else the seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            if self._start is None:
                self._start = now
            self._calls += 1
            rate = self.rate_at(now)
            capacity = float(self.burst) if self.burst is not None else rate * self.burst_s
            capacity = max(1.0, capacity)
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            second = self._seconds.setdefault(int(now - self._start), [rate, 0, 0])
            second[0] = rate
            second[1 if allowed else 2] += 1
            return 0.0 if allowed else (1 - tokens) / rate

    def timeline(self) -> list[dict[str, float]]:
        """Per second since the first call: the limit in force, calls let through, calls answered 429."""
        with self._lock:
            return [{"t": t, "limit": v[0], "passed": v[1], "limited": v[2]} for t, v in sorted(self._seconds.items())]
