"""A throwaway PostgreSQL 15 cluster bootstrapped with Supabase's API roles.

`initdb` and `postgres` refuse to run as root, so under root the server processes run as the
`postgres` OS user (the data directory is chowned to it). SQL goes through `psql` over TCP, which
keeps the stack free of a Python driver dependency.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from .processes import ChildSpawner, log_tail, terminate

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"

ROLES_SQL = """
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit password :'authenticator_password';
grant anon, authenticated, service_role to authenticator;
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
"""

DATABASE_SQL = """
create schema if not exists extensions;
create extension if not exists "uuid-ossp" with schema extensions;
grant usage on schema extensions to anon, authenticated, service_role;
alter database :"dbname" set search_path to "$user", public, extensions;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
"""

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "64MB",
    "timezone": "UTC",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}


class SqlError(RuntimeError):
    """psql reported an error; the message carries PostgreSQL's text (e.g. the SQLSTATE message)."""


def _require_binaries() -> None:
    if not (PG_BIN / "postgres").exists():
        raise RuntimeError(f"PostgreSQL 15 binaries not found in {PG_BIN}: run ./scripts/bootstrap.sh")


def _server_user() -> str | None:
    """The OS user for initdb/postgres: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs a `postgres` OS user: run ./scripts/bootstrap.sh") from exc
    return "postgres"


def _check_reachable(datadir: Path, user: str | None) -> None:
    """Fail clearly when the server user cannot traverse to the data directory (e.g. pytest's 0700 tmp)."""
    if user is None:
        return
    uid = pwd.getpwnam(user).pw_uid
    for parent in datadir.parents:
        info = parent.stat()
        if info.st_uid != uid and not info.st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"the {user} OS user cannot reach {datadir}: {parent} is not world-traversable (o+x); "
                "pick a workdir whose parent directories allow it"
            )


class PostgresCluster:
    """One data directory and the postmaster serving it on 127.0.0.1:`port`."""

    def __init__(self, datadir: Path, port: int, password: str, spawner: ChildSpawner, log_path: Path):
        _require_binaries()
        self.datadir = datadir
        self.port = port
        self.password = password
        self.log_path = log_path
        self._spawner = spawner
        self._user = _server_user()
        self.process: subprocess.Popen | None = None

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def initialize(self, authenticator_password: str) -> None:
        """initdb (as the server user), then Supabase's roles and database defaults."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        _check_reachable(self.datadir, self._user)
        pwfile = self.datadir.parent / ".pgpass-init"
        pwfile.write_text(self.password + "\n")
        if self._user:
            entry = pwd.getpwnam(self._user)
            for path in (self.datadir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.datadir, 0o700)
        try:
            result = subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                ],
                user=self._user,
                cwd=self.datadir,
                capture_output=True,
                text=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        self.start()
        self.run(ROLES_SQL, variables={"authenticator_password": authenticator_password})
        self.bootstrap_database("postgres")

    def bootstrap_database(self, database: str) -> None:
        """Supabase's per-database setup: the `extensions` schema with uuid-ossp and API grants."""
        self.run(DATABASE_SQL, database=database, variables={"dbname": database})

    def start(self) -> None:
        _check_reachable(self.datadir, self._user)
        args = [str(PG_BIN / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for name, value in SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            self.process = self._spawner.popen(
                args,
                death_signal=signal.SIGQUIT,
                user=self._user,
                cwd=self.datadir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {log_tail(self.log_path)}")
            probe = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections within {timeout}s: {log_tail(self.log_path)}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        if self.process is not None:
            terminate(self.process, signal.SIGINT, timeout=15)
            self.process = None

    def run(
        self,
        sql: str,
        *,
        database: str = "postgres",
        single_transaction: bool = False,
        variables: dict[str, str] | None = None,
        tuples_only: bool = False,
    ) -> str:
        """Run SQL text through psql as the superuser; raises SqlError with psql's message."""
        args = [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
        ]
        if single_transaction:
            args.append("--single-transaction")
        if tuples_only:
            args += ["-A", "-t"]
        for name, value in (variables or {}).items():
            args += ["-v", f"{name}={value}"]
        args += ["-f", "-"]
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10", "PGTZ": "UTC"}
        env.pop("PGOPTIONS", None)
        result = subprocess.run(args, input=sql, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SqlError(result.stderr.strip() or f"psql exited with {result.returncode}")
        return result.stdout

    def query(self, sql: str, *, database: str = "postgres") -> list[dict]:
        """Rows of one SELECT (or DML with RETURNING inside a CTE) as dicts, via json_agg."""
        body = sql.strip().rstrip(";")
        wrapped = f"select coalesce(json_agg(row_to_json(q)), '[]'::json) from ({body}\n) as q;"
        output = self.run(wrapped, database=database, tuples_only=True).strip()
        return json.loads(output) if output else []

    def remove(self) -> None:
        shutil.rmtree(self.datadir, ignore_errors=True)
