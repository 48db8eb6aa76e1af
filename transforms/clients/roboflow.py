"""Roboflow REST client for the importer's read paths: project info, search pages, details, bytes.

The key travels only as an ``Authorization: Bearer`` header, never in a URL. Every call has a
timeout, goes through a shared :class:`AdaptiveRateLimiter` (CDN downloads excepted: they are not
API calls) and is retried on 429/5xx/resets with backoff that honours ``Retry-After``. Errors carry
redacted messages, since Roboflow's 401 body echoes the key.

    client = RoboflowClient("https://api.roboflow.com", api_key, limiter=AdaptiveRateLimiter(100))
    page = client.search_page("my-ws", "my-project", offset=0, limit=250)
    details = client.image_details("my-ws", "my-project", page.ids[0])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from transforms.core.listing_summary import SUMMARY_FIELDS, SUMMARY_FIELDS_V1
from transforms.core.ratelimit import (
    AUTO_MAX_IN_FLIGHT,
    DEFAULT_STALL_TIMEOUT,
    AdaptiveRateLimiter,
    LittleGate,
    StallWatch,
    in_flight_gate,
)
from transforms.core.redact import redact, register_secret
from transforms.core.retry import (
    PermanentError,
    RateLimited,
    RetryPolicy,
    TransientError,
    call_with_retries,
    parse_retry_after,
)
from transforms.core.tally import count

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504, 520, 522, 524}
MAX_PAGE = 250
# Answers about the account, not the image: no retry, and no later call can succeed either, so the first
# one stops the run (roboflow-api.md §3: 402 not enough credits, 423 usage paused, 403 not authorised).
ACCOUNT_REFUSALS = {
    402: ("payment_required", "the workspace is out of credits; add credits or upgrade the plan in Roboflow"),
    423: ("usage_paused", "the workspace's API usage is paused; resume it in Roboflow (or ask its owner)"),
    403: ("forbidden", "the key lost access to this project; use the private API key of the workspace "
                       "that owns it"),
}


class RoboflowError(PermanentError):
    """A Roboflow answer retrying will not change (bad key, unknown project, missing image)."""


class RoboflowStopped(RoboflowError):
    """Roboflow refused the account (402, 423, 403): this run can make no more API calls.

    The call that met the refusal raises it with the status's kind; every later call of the client
    raises it with kind ``not_attempted`` without a request, so the remaining images are dead-lettered
    at once, each with the reason, instead of each spending a call on the same answer.
    """

    def __init__(self, kind: str, message: str, *, status: int, fix: str):
        super().__init__(kind, message, status=status)
        self.fix = fix


# Every live client, so a new run in this process starts unstopped (the workers' clients are cached across
# imports of one process, pipeline/api.py).
_clients: weakref.WeakSet = weakref.WeakSet()


def clear_account_stops() -> None:
    """Forget earlier runs' account refusals and stalls: the user may have added credits, resumed usage
    or waited out the limit since."""
    for client in list(_clients):
        client.stopped = None
        client.stall.forget()


def stall_error(route: str, timeout: float, attempts: int = 1) -> RoboflowError:
    """The dead letter's error once the run has stalled on 429s: one line that names what to do."""
    error = RoboflowError(
        "rate_limited",
        f"{route}: Roboflow answered no call but with 429 for {timeout:g} s (--roboflow_stall_timeout); "
        "the import stops: run it again later with --retry_dead_letters on this run's dead letters, "
        "or set a lower --roboflow_rate_limit", status=429)
    error.attempts = attempts
    return error


@dataclasses.dataclass(frozen=True)
class SearchPage:
    ids: list[str]
    total: int | None
    continuation_token: str | None = None
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per id: the listing's summary


@dataclasses.dataclass
class CallStats:
    """Calls and retries by kind; read by DoFns to feed Beam counters."""

    calls: int = 0
    retries: dict[str, int] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def count_call(self, route: str) -> None:
        count(f"roboflow.calls.{route}")
        with self.lock:
            self.calls += 1

    def count_retry(self, kind: str) -> None:
        count(f"retry.roboflow.{kind}")
        with self.lock:
            self.retries[kind] = self.retries.get(kind, 0) + 1


def _error_text(body: str) -> str:
    """The ``error`` of Roboflow's envelopes (string or object), redacted and short."""
    try:
        data = json.loads(body)
    except ValueError:
        return redact(body.strip()[:300])
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return redact(err.get("message") or err.get("type") or json.dumps(err))[:300]
    if err is not None:
        message = data.get("message")
        return redact(f"{err}: {message}" if message else str(err))[:300]
    return redact(body.strip()[:300])


class RoboflowClient:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        limiter: AdaptiveRateLimiter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        pool_size: int = 32,
        not_found_retries: int = 2,
        max_in_flight: int | None = None,
        max_api_in_flight: int = AUTO_MAX_IN_FLIGHT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ):
        register_secret(api_key)
        self.api_url = api_url.rstrip("/")
        self.limiter = limiter or AdaptiveRateLimiter(None)
        self.stall = StallWatch(stall_timeout)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.not_found_retries = not_found_retries
        self.stats = CallStats()
        self.stopped: RoboflowStopped | None = None  # the account refusal that stopped this client
        self._stop_lock = threading.Lock()
        self._gate = in_flight_gate(max_in_flight)  # CDN downloads
        self.api_gate = LittleGate(self.limiter, max_api_in_flight)
        _clients.add(self)
        self._api = self._session(pool_size, {"Authorization": f"Bearer {api_key}"})
        self._cdn = self._session(pool_size, {})

    @staticmethod
    def _session(pool_size: int, headers: dict[str, str]) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": "roboflow-supabase-import/0.1", **headers})
        return session

    def close(self) -> None:
        self._api.close()
        self._cdn.close()

    # ---- API calls ----------------------------------------------------------------------

    def _check_not_stopped(self, route: str) -> None:
        stopped = self.stopped
        if stopped is not None:
            raise RoboflowStopped("not_attempted", f"{route}: not attempted: the run stopped after Roboflow answered "
                                  f"{stopped.status} ({stopped.kind})", status=stopped.status, fix=stopped.fix)

    def _stop(self, route: str, status: int, body: str) -> RoboflowStopped:
        kind, fix = ACCOUNT_REFUSALS[status]
        exc = RoboflowStopped(kind, f"{route}: {status} {_error_text(body)}", status=status, fix=fix)
        with self._stop_lock:
            first = self.stopped is None
            if first:
                self.stopped = exc
        if first:  # the summary's stop line says it once; the images it leaves are dead letters, not log lines
            count(f"roboflow_stopped.{status}")
            log.debug("Roboflow answered %d on %s: stopping; %s", status, route, fix)
        return exc

    def _path(self, *segments: str) -> str:
        return self.api_url + "/" + "/".join(quote(str(s), safe="") for s in segments)

    def _call(self, method: str, url: str, route: str, body: dict | None = None,
              not_found_retries: int = 0) -> dict[str, Any]:
        """One API call with limiter and retries; returns the JSON body of a 2xx answer."""
        misses, attempts = {"n": 0}, {"n": 0}

        def attempt() -> dict[str, Any]:
            self._check_not_stopped(route)  # also after a back-off: another thread may have met the refusal
            self.stall.attempt()
            if self.stall.stalled():  # the run has stopped: the rest fail at once, not after a wait each
                raise RateLimited(f"{route}: not sent, the run is stalled on 429s")
            waited = self.limiter.acquire(retry=attempts["n"] > 0)  # its batch waits for it: ahead of the rest
            attempts["n"] += 1
            if waited:
                count("roboflow.throttled_seconds", waited)
            self.stats.count_call(route)
            try:
                with self.api_gate:
                    self._check_not_stopped(route)  # tasks queue at the gate: check again before sending
                    resp = self._api.request(method, url, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError("connection", f"{route}: {type(exc).__name__}: {redact(exc)}") from None
            if resp.status_code == 429:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self.limiter.on_throttled(retry_after)
                self.stall.throttled()
                raise RateLimited(f"{route}: 429 {_error_text(resp.text)}", retry_after=retry_after)
            if resp.status_code not in RETRYABLE_STATUS:
                self.stall.success()  # Roboflow answered: whatever it said, it is not holding us off
                self.limiter.on_success()
            if resp.status_code in RETRYABLE_STATUS:
                raise TransientError(f"http_{resp.status_code}", f"{route}: {resp.status_code} "
                                     f"{_error_text(resp.text)}", status=resp.status_code)
            if resp.status_code in ACCOUNT_REFUSALS:
                raise self._stop(route, resp.status_code, resp.text)
            if resp.status_code == 404 and misses["n"] < not_found_retries:
                misses["n"] += 1
                raise TransientError("not_found_yet", f"{route}: 404 {_error_text(resp.text)}", status=404)
            if resp.status_code >= 400:
                kind = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
                    resp.status_code, f"http_{resp.status_code}")
                raise RoboflowError(kind, f"{route}: {resp.status_code} {_error_text(resp.text)}",
                                    status=resp.status_code)
            try:
                data = resp.json()
            except ValueError:
                raise TransientError("bad_json", f"{route}: {resp.status_code} non-JSON body") from None
            if isinstance(data, dict) and "error" in data and resp.status_code != 202:
                raise RoboflowError("api_error", f"{route}: {_error_text(resp.text)}", status=resp.status_code)
            return data

        def on_retry(exc: TransientError, attempt_no: int, delay: float) -> None:
            self.stats.count_retry(exc.kind)
            if exc.kind == "rate_limited":  # the back-off (or Retry-After) after a 429 is time throttled too
                count("roboflow.throttled_seconds", delay)
            log.debug("retrying %s after %s (attempt %d, %.2fs)", route, exc.kind, attempt_no, delay)

        try:
            return call_with_retries(attempt, self.retry, on_retry=on_retry, stalled=self.stall.stalled)
        except RateLimited as exc:  # only a stall lets a 429 through
            if self.stall.first_report():
                log.error("%s", stall_error(route, self.stall.timeout))
            raise stall_error(route, self.stall.timeout, getattr(exc, "attempts", 1)) from None

    def workspace(self, workspace: str) -> dict[str, Any]:
        return self._call("GET", self._path(workspace), "workspace")

    def project(self, workspace: str, project: str) -> dict[str, Any]:
        return self._call("GET", self._path(workspace, project), "project")

    def version(self, workspace: str, project: str, version: int) -> dict[str, Any]:
        return self._call("GET", self._path(workspace, project, str(version)), "version")

    def search_page(self, workspace: str, project: str, *, offset: int, limit: int = MAX_PAGE,
                    filters: dict[str, Any] | None = None) -> SearchPage:
        """One page of project search (``POST /{ws}/{proj}/search``): ids and each image's summary."""
        body = {"offset": offset, "limit": min(limit, MAX_PAGE), "fields": list(SUMMARY_FIELDS), **(filters or {})}
        data = self._call("POST", self._path(workspace, project, "search"), "search", body)
        results = data.get("results")
        if not isinstance(results, list):
            raise TransientError("bad_page", "search: answer has no results list")
        kept = [r for r in results if isinstance(r, dict) and r.get("id")]
        return SearchPage([str(r["id"]) for r in kept], _int_or_none(data.get("total")), results=kept)

    def search_v1_page(self, workspace: str, query: str, *, page_size: int = MAX_PAGE,
                       token: str | None = None) -> SearchPage:
        """One page of workspace search (``POST /{ws}/search/v1``) walked by continuation token."""
        body: dict[str, Any] = {"query": query, "pageSize": page_size, "fields": list(SUMMARY_FIELDS_V1)}
        if token:
            body["continuationToken"] = token
        data = self._call("POST", self._path(workspace, "search", "v1"), "search_v1", body)
        results = data.get("results")
        if not isinstance(results, list):
            raise TransientError("bad_page", "search_v1: answer has no results list")
        kept = [r for r in results if isinstance(r, dict) and r.get("id")]
        return SearchPage([str(r["id"]) for r in kept], _int_or_none(data.get("total")),
                          data.get("continuationToken") or None, results=kept)

    def image_details(self, workspace: str, project: str, image_id: str) -> dict[str, Any]:
        """``GET /{ws}/{proj}/images/{id}``; a 404 is retried briefly (eventual consistency)."""
        return self._call("GET", self._path(workspace, project, "images", image_id), "image_details",
                          not_found_retries=self.not_found_retries)

    # ---- CDN ----------------------------------------------------------------------------

    def download(self, url: str, validate: Callable[[bytes, bool], Any] | None = None) -> bytes:
        """GET image bytes (no key: the CDN needs none), retrying bodies shorter than announced.

        ``validate(data, length_checked)`` may raise :class:`TransientError` to retry; it is told
        whether the answer had a ``Content-Length`` (which urllib3 enforces), i.e. whether the
        transfer is known complete.
        """
        if not url.startswith(("http://", "https://")):
            raise RoboflowError("bad_url", f"image url is not http(s): {redact(url)[:200]}")

        def attempt() -> bytes:
            try:
                with self._gate:
                    resp = self._cdn.get(url, timeout=self.timeout)
                    data = resp.content
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError("connection", f"download: {type(exc).__name__}") from None
            except requests.exceptions.ChunkedEncodingError:
                raise TransientError("truncated_body", "download: body ended early") from None
            if resp.status_code == 429 or resp.status_code in RETRYABLE_STATUS:
                raise TransientError(f"http_{resp.status_code}", f"download: {resp.status_code}",
                                     retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                                     status=resp.status_code)
            if resp.status_code >= 400:
                kind = "not_found" if resp.status_code == 404 else f"http_{resp.status_code}"
                raise RoboflowError(kind, f"download: {resp.status_code}", status=resp.status_code)
            # urllib3 already checks the bytes on the wire against Content-Length (a short body raises
            # above); comparing it with the *decoded* body rejected every complete gzip-encoded one.
            if validate is not None:
                validate(data, resp.headers.get("Content-Length") is not None)
            return data

        def on_retry(exc: TransientError, attempt_no: int, delay: float) -> None:
            self.stats.count_retry("cdn_" + exc.kind)

        return call_with_retries(attempt, self.retry, on_retry=on_retry)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
