"""Run a local Supabase stack until SIGTERM/SIGINT; print one JSON line on stdout once it is ready.

Benchmarks and the demo start this as a subprocess and read {"url", "service_role_key", "anon_key",
"db_url"} from that line. Nothing else goes to stdout; progress goes to stderr (never the keys).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from .faults import StackFaults
from .stack import DEFAULT_FILE_SIZE_LIMIT, LocalSupabase

FAULT_RATE_OPTIONS = (
    "storage_5xx_rate",
    "storage_429_rate",
    "storage_disconnect_rate",
    "storage_slow_rate",
    "storage_413_rate",
    "rest_503_rate",
    "rest_500_rate",
    "rest_429_rate",
    "rest_slow_rate",
    "rest_lost_response_rate",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.testing.supabase_stack",
        description="Local Supabase (PostgreSQL 15 + PostgREST 12.0.2 + Storage double) behind one gateway port. "
        "Prints one JSON line with url, service_role_key, anon_key and db_url when ready; stops on SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=0, help="gateway port (default: a free port)")
    parser.add_argument("--workdir", help="keep the cluster, secrets and objects here (default: temp dir, removed)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply pipeline/migrations/*.sql")
    parser.add_argument(
        "--bucket", action="append", metavar="NAME", help="private bucket to create (repeatable; default: od-images)"
    )
    parser.add_argument(
        "--bucket-size-limit",
        type=int,
        default=DEFAULT_FILE_SIZE_LIMIT,
        help="file_size_limit in bytes of the --bucket buckets (default: 50 MB)",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault generator")
    for option in FAULT_RATE_OPTIONS:
        parser.add_argument(
            "--" + option.replace("_", "-"),
            type=float,
            default=0.0,
            metavar="RATE",
            help="probability per request (0..1)",
        )
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="delay of a slow response")
    parser.add_argument(
        "--proxy-max-body-bytes", type=int, default=None, help="bodies above this get the edge's HTML 413"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faults = StackFaults(
        seed=args.fault_seed,
        slow_seconds=args.slow_seconds,
        proxy_max_body_bytes=args.proxy_max_body_bytes,
        **{option: getattr(args, option) for option in FAULT_RATE_OPTIONS},
    )
    buckets = {
        name: {"public": False, "file_size_limit": args.bucket_size_limit} for name in (args.bucket or ["od-images"])
    }
    stop_requested = threading.Event()

    def request_stop(signum, _frame) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    stack = LocalSupabase(args.workdir, migrate=not args.no_migrate, buckets=buckets, port=args.port, faults=faults)
    stack.start()
    try:
        print(f"supabase stack ready at {stack.url} in {time.monotonic() - started:.1f}s", file=sys.stderr)
        ready = {
            "url": stack.url,
            "service_role_key": stack.service_role_key,
            "anon_key": stack.anon_key,
            "db_url": stack.db_url,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not stop_requested.wait(0.5):
            pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
