"""Picklable client settings, and one client of each kind per worker process.

DoFns carry a :class:`RoboflowConfig` / :class:`SupabaseConfig` (no secrets, only where to read
them) and call :func:`roboflow_client` / :func:`supabase_client` in ``setup()``. Every DoFn of a
process gets the same client, so the Roboflow rate limiter and the HTTP pools are per process,
as Roboflow's per-key limit needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading

from apache_beam.utils.shared import Shared

from transforms.clients.roboflow import RoboflowClient
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, DEFAULT_STALL_TIMEOUT, AdaptiveRateLimiter
from transforms.core.retry import RetryPolicy
from transforms.core.secrets import SecretRef


@dataclasses.dataclass(frozen=True)
class RoboflowConfig:
    api_url: str
    api_key: SecretRef
    rate_limit: float | None = None  # requests/s for this worker process; None = adapt
    timeout: float = 30.0
    pool_size: int = 32
    max_in_flight: int | None = None  # concurrent CDN downloads per worker process
    max_api_in_flight: int = AUTO_MAX_IN_FLIGHT  # upper bound of the API calls Little's law lets in flight
    retry: RetryPolicy = RetryPolicy()
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # --roboflow_stall_timeout


@dataclasses.dataclass(frozen=True)
class SupabaseConfig:
    url: str
    service_key: SecretRef
    bucket: str = "od-images"
    timeout: float = 60.0
    max_connections: int = 32
    max_in_flight: int | None = None
    retry: RetryPolicy = RetryPolicy(max_attempts=12, max_elapsed=180.0)


class _Holder:
    """Weak-referenceable box for ``Shared``."""

    def __init__(self, client):
        self.client = client


# One Shared per kind: a Shared holds one object, and acquiring it with another tag replaces that object,
# so a single Shared for both kinds would build a new Roboflow client (and rate limiter) for every DoFn.
_shared_roboflow = Shared()
_shared_supabase = Shared()
_lock = threading.Lock()


def _key_identity(ref: SecretRef) -> str:
    """Which key a cached client was built with: an environment variable can hold another key in
    the next import of the same process (pipeline/api.py), and that import must not reuse a client
    holding the previous key. A digest, never the key; Secret Manager versions name their value."""
    if not ref.env_var:
        return ""
    return hashlib.sha256(os.environ.get(ref.env_var, "").encode("utf-8")).hexdigest()[:16]


def roboflow_client(config: RoboflowConfig) -> _Holder:
    """The process's Roboflow client for this config. Keep the returned holder alive while in use."""

    def make() -> _Holder:
        return _Holder(RoboflowClient(
            config.api_url, config.api_key.resolve(), limiter=AdaptiveRateLimiter(config.rate_limit),
            retry=config.retry, timeout=config.timeout, pool_size=config.pool_size,
            max_in_flight=config.max_in_flight, max_api_in_flight=config.max_api_in_flight,
            stall_timeout=config.stall_timeout))

    with _lock:
        return _shared_roboflow.acquire(make, tag=f"roboflow:{hash(config)}:{_key_identity(config.api_key)}")


def supabase_client(config: SupabaseConfig) -> _Holder:
    """The process's Supabase client for this config. Keep the returned holder alive while in use."""

    def make() -> _Holder:
        return _Holder(SupabaseClient(
            config.url, config.service_key.resolve(), bucket=config.bucket, retry=config.retry,
            timeout=config.timeout, max_connections=config.max_connections, max_in_flight=config.max_in_flight))

    with _lock:
        return _shared_supabase.acquire(make, tag=f"supabase:{hash(config)}:{_key_identity(config.service_key)}")
