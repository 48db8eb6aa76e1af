"""The real PostgREST 12.0.2 binary, configured like Supabase's (reference §9.2).

Readiness and schema reloads are observed through PostgREST's own log ("Schema cache loaded"),
so the stack knows when tables created by a migration are visible through the API.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

from .processes import ChildSpawner, log_tail, terminate

DEFAULT_BINARY = Path(__file__).resolve().parents[3] / ".cache" / "bin" / "postgrest"
SCHEMA_LOADED = b"Schema cache loaded"


def postgrest_binary() -> Path:
    """`$POSTGREST_BIN` or the bootstrap location; a missing binary is an error, never a skip."""
    binary = Path(os.environ.get("POSTGREST_BIN") or DEFAULT_BINARY)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise RuntimeError(f"PostgREST binary not found at {binary}: run ./scripts/bootstrap.sh")
    return binary


class PostgrestServer:
    """One PostgREST process on 127.0.0.1:`port`, logging to `log_path`."""

    def __init__(
        self,
        *,
        port: int,
        db_uri: str,
        jwt_secret: str,
        spawner: ChildSpawner,
        log_path: Path,
        max_rows: int = 1000,
        pool_size: int = 10,
    ) -> None:
        self.binary = postgrest_binary()
        self.port = port
        self.log_path = log_path
        self._spawner = spawner
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PGRST_DB_URI": db_uri,
            "PGRST_DB_SCHEMAS": "public",
            "PGRST_DB_EXTRA_SEARCH_PATH": "public,extensions",
            "PGRST_DB_ANON_ROLE": "anon",
            "PGRST_JWT_SECRET": jwt_secret,
            "PGRST_SERVER_HOST": "127.0.0.1",
            "PGRST_SERVER_PORT": str(port),
            "PGRST_DB_MAX_ROWS": str(max_rows),
            "PGRST_DB_POOL": str(pool_size),
            "PGRST_DB_CHANNEL_ENABLED": "true",
            "PGRST_LOG_LEVEL": "error",
        }
        self.process: subprocess.Popen | None = None

    def schema_loads(self) -> int:
        """How many times the schema cache has been (re)loaded, from the log."""
        try:
            return self.log_path.read_bytes().count(SCHEMA_LOADED)
        except FileNotFoundError:
            return 0

    def start(self, timeout: float = 30) -> None:
        loads_before = self.schema_loads()
        with open(self.log_path, "ab") as log:
            self.process = self._spawner.popen(
                [str(self.binary)],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.wait_for_schema_load(loads_before, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._root_status() == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgREST did not answer on port {self.port}: {log_tail(self.log_path)}")

    def wait_for_schema_load(self, loads_before: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"PostgREST exited with {self.process.returncode}: {log_tail(self.log_path)}")
            if self.schema_loads() > loads_before:
                return
            time.sleep(0.02)
        raise RuntimeError(f"PostgREST did not load its schema cache within {timeout}s: {log_tail(self.log_path)}")

    def _root_status(self) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            return response.status
        except OSError:
            return None
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, signal.SIGTERM, timeout=5)
            self.process = None
