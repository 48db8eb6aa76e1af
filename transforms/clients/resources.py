"""Picklable client settings, and one client of each kind per worker process.

DoFns carry a :class:`RoboflowConfig` / :class:`SupabaseConfig` (no secrets, only where to read
them), lease a client with :func:`roboflow_client` / :func:`supabase_client` in ``setup()`` and
release it in ``teardown()``. Every DoFn of a process leases the same client, so the Roboflow rate
limiter and the HTTP pools are per process, as Roboflow's per-key limit needs; the last release
closes the client's connections (transforms/core/shared.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from transforms.clients.rate_peers import BEAT_FUNCTION, RatePeers, key_digest
from transforms.clients.roboflow import RoboflowClient
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, DEFAULT_STALL_TIMEOUT, JOB_START, AdaptiveRateLimiter
from transforms.core.retry import RetryPolicy
from transforms.core.secrets import SecretRef
from transforms.core.shared import PROCESS_SHARED, Lease


@dataclasses.dataclass(frozen=True)
class RoboflowConfig:
    api_url: str
    api_key: SecretRef
    rate_limit: float | None = None  # requests/s for this worker process; None = adapt
    start_rate: float = JOB_START  # where adapting starts (ratelimit.start_rate)
    job_rate_limit: float | None = None  # --roboflow_rate_limit, divided among the live processes (rate_peers.py)
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
    bucket_public: bool = False  # which object URL od_images.image_url gets (SupabaseClient.object_url)
    timeout: float = 60.0
    max_connections: int = 32
    max_in_flight: int | None = None
    retry: RetryPolicy = RetryPolicy(max_attempts=12, max_elapsed=180.0)




def _key_identity(ref: SecretRef) -> str:
    """Which key a cached client was built with: an environment variable can hold another key in
    the next import of the same process (pipeline/api.py), and that import must not reuse a client
    holding the previous key. A digest, never the key; Secret Manager versions name their value."""
    if not ref.env_var:
        return ""
    return hashlib.sha256(os.environ.get(ref.env_var, "").encode("utf-8")).hexdigest()[:16]


def _close(client: RoboflowClient | SupabaseClient) -> None:
    client.close()


def roboflow_client(config: RoboflowConfig) -> Lease[RoboflowClient]:
    """A lease on the process's Roboflow client for this config; release it when done."""

    def make() -> RoboflowClient:
        return RoboflowClient(
            config.api_url, config.api_key.resolve(),
            limiter=AdaptiveRateLimiter(config.rate_limit, job_rate=config.job_rate_limit,
                                        initial_rate=config.start_rate),
            retry=config.retry, timeout=config.timeout, pool_size=config.pool_size,
            max_in_flight=config.max_in_flight, max_api_in_flight=config.max_api_in_flight,
            stall_timeout=config.stall_timeout)

    return PROCESS_SHARED.lease(("roboflow", config, _key_identity(config.api_key)), make, close=_close)


BEAT_RETRY = RetryPolicy(max_attempts=1)  # a beat is better skipped than late


def rate_peers(roboflow: RoboflowConfig, supabase: SupabaseConfig, client: RoboflowClient,
               database: SupabaseClient) -> Lease[RatePeers]:
    """A lease on the beats that tell the process's limiter (``client.limiter``) of the other processes
    on its Roboflow key; ``client`` and ``database`` are the process's own clients for these configs."""

    def beat(params: dict) -> object:
        return database.rpc(BEAT_FUNCTION, params, retry=BEAT_RETRY)

    def make() -> RatePeers:
        return RatePeers(client.limiter, beat, key_digest(roboflow.api_key.resolve())).start()

    key = ("rate_peers", roboflow, supabase, _key_identity(roboflow.api_key), _key_identity(supabase.service_key))
    return PROCESS_SHARED.lease(key, make, close=lambda peers: peers.close())


def supabase_client(config: SupabaseConfig) -> Lease[SupabaseClient]:
    """A lease on the process's Supabase client for this config; release it when done."""

    def make() -> SupabaseClient:
        return SupabaseClient(
            config.url, config.service_key.resolve(), bucket=config.bucket, bucket_public=config.bucket_public,
            retry=config.retry, timeout=config.timeout, max_connections=config.max_connections,
            max_in_flight=config.max_in_flight)

    return PROCESS_SHARED.lease(("supabase", config, _key_identity(config.service_key)), make, close=_close)
