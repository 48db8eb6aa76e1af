"""Seeded fault injection: the failures a bulk importer meets on the hosted platform.

Rates are probabilities per request (0..1). Each request draws from one seeded generator in a
fixed order, so a single-threaded run with the same seed sees the same faults.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field

CLOUDFLARE_REASONS = {
    500: "Internal Server Error",
    502: "Bad gateway",
    503: "Service Unavailable",
    520: "Web server is returning an unknown error",
}


@dataclass(frozen=True)
class StackFaults:
    """What the gateway should break, and how often. All zero = a healthy stack."""

    seed: int = 0
    storage_5xx_rate: float = 0.0
    storage_5xx_statuses: tuple[int, ...] = (500, 502, 503, 520)
    storage_429_rate: float = 0.0
    storage_disconnect_rate: float = 0.0
    storage_slow_rate: float = 0.0
    storage_413_rate: float = 0.0
    rest_503_rate: float = 0.0
    rest_503_every: int = 0  # every n-th PostgREST request answers 503: a fixed share with no luck in it
    rest_500_rate: float = 0.0
    rest_429_rate: float = 0.0
    rest_slow_rate: float = 0.0
    rest_lost_response_rate: float = 0.0
    slow_seconds: float = 2.0
    proxy_max_body_bytes: int | None = None
    # Storage's own coded errors, rendered as its error handler does (HTTP 400, the status as a string in
    # the body): 544 DatabaseTimeout, 503 SlowDown, 423 ResourceLocked (supabase/storage codes.ts).
    storage_coded_error_rate: float = 0.0
    storage_coded_error_statuses: tuple[int, ...] = (544, 503, 423)
    # Not a fault: the edge's request-line limit, on by default because the real edge has one. Kong's nginx
    # answers 414 above 8 KB (large_client_header_buffers 4 8k; inferred from nginx's default, Kong sets
    # none); hosted Supabase's Cloudflare allows about 16 KB. None = no limit (the old 64 KB of http.server).
    max_request_line_bytes: int | None = 8192

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["storage_5xx_statuses"] = list(self.storage_5xx_statuses)
        data["storage_coded_error_statuses"] = list(self.storage_coded_error_statuses)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StackFaults:
        """Build from JSON (the control route); unknown keys are an error, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        values = dict(data)
        for name in ("storage_5xx_statuses", "storage_coded_error_statuses"):
            if name in values:
                values[name] = tuple(int(s) for s in values[name])
        return cls(**values)


@dataclass
class FaultDecision:
    """What to do to one request: an early error response, a delay, or a cut-off body."""

    kind: str | None = None
    status: int | None = None
    delay: float = 0.0
    extra: dict = field(default_factory=dict)


class FaultInjector:
    """Draws fault decisions from the current StackFaults; swapping the config reseeds."""

    def __init__(self, faults: StackFaults | None = None) -> None:
        self._lock = threading.Lock()
        self.configure(faults or StackFaults())

    @property
    def faults(self) -> StackFaults:
        return self._faults

    def configure(self, faults: StackFaults) -> None:
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._rest_requests = 0

    def _hit(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def for_storage(self) -> FaultDecision:
        with self._lock:
            f = self._faults
            decision = FaultDecision()
            if self._hit(f.storage_slow_rate):
                decision.delay = f.slow_seconds
            if self._hit(f.storage_413_rate):
                decision.kind, decision.status = "storage_413", 413
            elif self._hit(f.storage_5xx_rate):
                decision.kind = "storage_5xx"
                decision.status = self._rng.choice(f.storage_5xx_statuses)
            elif self._hit(f.storage_429_rate):
                decision.kind, decision.status = "storage_429", 429
            elif self._hit(f.storage_coded_error_rate):
                decision.kind = "storage_coded_error"
                decision.status = self._rng.choice(f.storage_coded_error_statuses)
            elif self._hit(f.storage_disconnect_rate):
                decision.kind = "storage_disconnect"
            return decision

    def for_rest(self) -> FaultDecision:
        with self._lock:
            f = self._faults
            decision = FaultDecision()
            if self._hit(f.rest_slow_rate):
                decision.delay = f.slow_seconds
            self._rest_requests += 1
            if f.rest_503_every and self._rest_requests % f.rest_503_every == 0:
                decision.kind, decision.status = "rest_503", 503
            elif self._hit(f.rest_503_rate):
                decision.kind, decision.status = "rest_503", 503
            elif self._hit(f.rest_500_rate):
                decision.kind, decision.status = "rest_500", 500
            elif self._hit(f.rest_429_rate):
                decision.kind, decision.status = "rest_429", 429
            elif self._hit(f.rest_lost_response_rate):
                decision.kind, decision.status = "rest_lost_response", 502
            return decision


def cloudflare_error_page(status: int) -> bytes:
    """The HTML Cloudflare serves in front of Supabase when the origin fails."""
    reason = CLOUDFLARE_REASONS.get(status, "Error")
    return (
        '<!DOCTYPE html>\n<html lang="en-US"><head><title>'
        f"supabase.co | {status}: {reason}</title></head>\n"
        f'<body><div id="cf-error-details"><h1>{reason}</h1><span>Error code {status}</span>'
        "<p>Cloudflare Ray ID: 8c0ffee000000000</p></div></body></html>\n"
    ).encode()


def uri_too_long_page() -> bytes:
    """nginx's (Kong's) page for a request line over its header buffer."""
    return (
        b"<html>\r\n<head><title>414 Request-URI Too Large</title></head>\r\n<body>\r\n"
        b"<center><h1>414 Request-URI Too Large</h1></center>\r\n<hr><center>openresty</center>\r\n"
        b"</body>\r\n</html>\r\n"
    )


def proxy_413_page() -> bytes:
    """The bare nginx/Cloudflare page for a request body over the edge limit."""
    return (
        b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
        b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
        b"</body>\r\n</html>\r\n"
    )
