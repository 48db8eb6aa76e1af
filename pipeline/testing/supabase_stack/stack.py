"""`LocalSupabase`: PostgreSQL 15 + PostgREST 12.0.2 + a Storage double behind one gateway port.

The official supabase-py client works against `stack.url` unchanged. Everything runs on 127.0.0.1
in a throwaway workdir; children die with the process that started them (see processes.py).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from .faults import FaultInjector, StackFaults
from .gateway import Counters, Gateway
from .keys import mint_key, new_jwt_secret
from .postgres import PostgresCluster
from .postgrest import PostgrestServer
from .processes import ChildSpawner, StackRegistry, sweep_orphans
from .storage.routes import StorageDouble
from .storage.store import DEFAULT_FILE_SIZE_LIMIT, StorageStore

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
IMPORTER_TABLES = ("od_datasets", "od_classes", "od_images", "od_dataset_images", "od_annotations", "od_import_runs",
                   "od_import_rate_peers",
                   "cls_datasets", "cls_classes", "cls_images", "cls_dataset_images", "cls_labels")
DEFAULT_BUCKETS = {"od-images": {"public": False, "file_size_limit": DEFAULT_FILE_SIZE_LIMIT}}
# The platform's classification bucket (platform.md §2), for stacks that serve classification imports.
CLS_BUCKET = {"cls-images": {"public": True, "file_size_limit": 52428800,
                             "allowed_mime_types": ["image/jpeg", "image/png", "image/webp", "image/gif"]}}
DDL_STATEMENT = re.compile(r"^\s*(create|alter|drop|comment|grant|revoke)\b", re.IGNORECASE | re.MULTILINE)

RESET_SQL = """
truncate od_annotations, od_dataset_images, od_images, od_import_runs, od_import_rate_peers;
truncate cls_labels, cls_dataset_images, cls_images, cls_classes, cls_datasets;
delete from od_classes where dataset_id is not null or not coalesce(is_system, false);
delete from od_datasets;
"""


def migration_files() -> list[Path]:
    """The numbered SQL migrations, in the order they must be applied."""
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSupabase:
    """A faithful local Supabase: use as a context manager, or start()/stop().

    `workdir=None` uses a temp dir removed on stop; a given workdir is kept and reused (cluster,
    secrets and objects survive). `buckets` maps bucket id -> {"public", "file_size_limit",
    "allowed_mime_types"}; they are (re)created by start() and reset().
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        migrate: bool = True,
        buckets: dict[str, dict] | None = None,
        port: int = 0,
        faults: StackFaults | None = None,
        global_file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT,
    ) -> None:
        self.migrate = migrate
        self.buckets = dict(DEFAULT_BUCKETS if buckets is None else buckets)
        self.global_file_size_limit = global_file_size_limit
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._requested_port = port
        self._fault_injector = FaultInjector(faults)
        self._counters = Counters()
        self.workdir: Path | None = None
        self._remove_workdir = False
        self._spawner: ChildSpawner | None = None
        self._registry: StackRegistry | None = None
        self._postgres: PostgresCluster | None = None
        self._postgrest: PostgrestServer | None = None
        self._gateway: Gateway | None = None
        self.storage: StorageStore | None = None
        self._secrets: dict[str, str] = {}
        self.service_role_key = ""
        self.anon_key = ""
        self.services_running = False

    def __repr__(self) -> str:
        return f"LocalSupabase(url={self.url if self._gateway else None!r}, workdir={str(self.workdir)!r})"

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalSupabase:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> LocalSupabase:
        sweep_orphans()
        try:
            self._prepare_workdir()
            self._spawner = ChildSpawner()
            self._registry = StackRegistry(f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
            self._registry.write(children={}, workdir=self.workdir, remove_workdir=self._remove_workdir)
            self._postgres = PostgresCluster(
                self.workdir / "pgdata",
                free_port(),
                self._secrets["db_password"],
                self._spawner,
                self.workdir / "postgres.log",
            )
            if self._postgres.initialized:
                self._postgres.start()
            else:
                self._postgres.initialize(self._secrets["authenticator_password"])
            self._write_registry()
            if self.migrate:
                self.apply_migrations()
            self._postgrest = PostgrestServer(
                port=free_port(),
                db_uri=(
                    f"postgres://authenticator:{self._secrets['authenticator_password']}"
                    f"@127.0.0.1:{self._postgres.port}/postgres"
                ),
                jwt_secret=self._secrets["jwt_secret"],
                spawner=self._spawner,
                log_path=self.workdir / "postgrest.log",
            )
            self._postgrest.start()
            self._write_registry()
            if self.migrate:
                self._wait_tables_visible()
            self.storage = StorageStore(self.workdir / "storage", self.global_file_size_limit)
            self._ensure_buckets()
            self._gateway = Gateway(
                host="127.0.0.1",
                port=self._requested_port,
                storage=StorageDouble(self.storage, self._secrets["jwt_secret"]),
                faults=self._fault_injector,
                counters=self._counters,
                api_keys={self.service_role_key, self.anon_key},
                control_key=self.service_role_key,
                rest_upstream=("127.0.0.1", self._postgrest.port),
            )
            self._gateway.start()
            self.services_running = True
        except BaseException:
            self.stop()
            raise
        log.info("local supabase ready at %s", self.url)
        return self

    def _prepare_workdir(self) -> None:
        if self._requested_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="supabase-stack-"))
            self._remove_workdir = True
        else:
            self.workdir = self._requested_workdir.resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o711)
        state_path = self.workdir / "stack-secrets.json"
        if state_path.exists():
            self._secrets = json.loads(state_path.read_text())
        else:
            self._secrets = {
                "jwt_secret": new_jwt_secret(),
                "db_password": secrets.token_urlsafe(18),
                "authenticator_password": secrets.token_urlsafe(18),
            }
            fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as state:
                json.dump(self._secrets, state)
        self.service_role_key = mint_key(self._secrets["jwt_secret"], "service_role")
        self.anon_key = mint_key(self._secrets["jwt_secret"], "anon")

    def _write_registry(self) -> None:
        if self._registry is not None:
            self._registry.write(children=self.pids(), workdir=self.workdir, remove_workdir=self._remove_workdir)

    def stop(self) -> None:
        """Stop every service, forget the registry record, remove a temp workdir. Idempotent."""
        self._stop_services_quietly()
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._registry is not None:
            self._registry.remove()
            self._registry = None
        if self._remove_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_services_quietly(self) -> None:
        if self._gateway is not None:
            self._gateway.stop()
        if self._postgrest is not None:
            self._postgrest.stop()
        if self._postgres is not None:
            self._postgres.stop()
        self.services_running = False

    def stop_services(self) -> None:
        """An outage: gateway, PostgREST and Postgres all stop; their ports refuse connections."""
        self._stop_services_quietly()
        self._write_registry()

    def start_services(self) -> None:
        """End an outage: the same ports, the same data, the same keys."""
        self._postgres.start()
        self._write_registry()
        self._postgrest.start()
        self._write_registry()
        self._gateway.start()
        self.services_running = True

    def pids(self) -> dict[str, int]:
        """Pids of the running server processes (for crash-cleanup checks)."""
        running = {}
        for name, server in (("postgres", self._postgres), ("postgrest", self._postgrest)):
            if server is not None and server.process is not None:
                running[name] = server.process.pid
        return running

    # --- connection facts ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._gateway.url

    @property
    def db_url(self) -> str:
        return self._postgres.dsn()

    @property
    def jwt_secret(self) -> str:
        return self._secrets["jwt_secret"]

    @property
    def postgrest_url(self) -> str:
        return f"http://127.0.0.1:{self._postgrest.port}"

    # --- faults and counters -------------------------------------------------------------------

    @property
    def faults(self) -> StackFaults:
        return self._fault_injector.faults

    @faults.setter
    def faults(self, value: StackFaults) -> None:
        self._fault_injector.configure(value)

    def counters(self) -> dict:
        """{"requests": {"POST /storage/v1/object/{bucket}/{path}": {"200": n, ...}, ...}, "faults": {kind: n}}"""
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        self._counters.reset()

    # --- SQL -----------------------------------------------------------------------------------

    def sql(self, query: str, *, database: str = "postgres") -> list[dict]:
        """Rows of one query as dicts (psql + json_agg), as the superuser."""
        return self._postgres.query(query, database=database)

    def execute_sql(self, text: str, *, database: str = "postgres", reload_schema: bool | None = None) -> None:
        """Run DDL/DML as the superuser; DDL on the API database also reloads PostgREST's schema cache."""
        self._postgres.run(text, database=database)
        if reload_schema is None:
            reload_schema = database == "postgres" and bool(DDL_STATEMENT.search(text))
        if reload_schema:
            self.reload_schema()

    def reload_schema(self) -> None:
        """NOTIFY pgrst and wait until PostgREST reports the new schema cache."""
        if self._postgrest is None or self._postgrest.process is None:
            return
        before = self._postgrest.schema_loads()
        self._postgres.run("notify pgrst, 'reload schema';")
        self._postgrest.wait_for_schema_load(before)

    def apply_migrations(self, *, database: str = "postgres") -> list[str]:
        """Apply every migration in order, each in one transaction; returns the file names.

        On the API database with PostgREST running, the schema cache is reloaded and the importer
        tables are confirmed visible through PostgREST before this returns.
        """
        applied = []
        for path in migration_files():
            self._postgres.run(path.read_text(), database=database, single_transaction=True)
            applied.append(path.name)
        if database == "postgres" and self._postgrest is not None and self._postgrest.process is not None:
            self.reload_schema()
            self._wait_tables_visible()
        return applied

    def _wait_tables_visible(self, timeout: float = 15) -> None:
        """Poll PostgREST until every importer table answers 200 (not 404) to the service role."""
        headers = {"Authorization": f"Bearer {self.service_role_key}"}
        deadline = time.monotonic() + timeout
        pending = list(IMPORTER_TABLES)
        while pending:
            conn = http.client.HTTPConnection("127.0.0.1", self._postgrest.port, timeout=5)
            try:
                conn.request("GET", f"/{pending[0]}?limit=0", headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    pending.pop(0)
                    continue
            except OSError:
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgREST does not expose {pending[0]} after the migrations")
            time.sleep(0.05)

    def create_database(self, name: str) -> None:
        """A fresh database in the same cluster, bootstrapped like `postgres` (extensions, grants)."""
        self._postgres.run(f'create database "{name}";')
        self._postgres.bootstrap_database(name)

    def drop_database(self, name: str) -> None:
        self._postgres.run(f'drop database if exists "{name}" with (force);')

    # --- storage -------------------------------------------------------------------------------

    def _ensure_buckets(self) -> None:
        for bucket_id, options in self.buckets.items():
            if self.storage.get_bucket(bucket_id) is None:
                self.storage.create_bucket(
                    bucket_id,
                    public=options.get("public", False),
                    file_size_limit=options.get("file_size_limit"),
                    allowed_mime_types=options.get("allowed_mime_types"),
                )

    def list_objects(self, bucket: str) -> list[dict]:
        """Every object in `bucket`, read from disk (no HTTP, no faults)."""
        objects = [
            {
                "name": meta["name"],
                "size": meta["size"],
                "content_type": meta["mimetype"],
                "etag": meta["etag"],
                "cache_control": meta["cache_control"],
                "id": meta["id"],
                "metadata": meta["user_metadata"],
                "created_at": meta["created_at"],
                "updated_at": meta["updated_at"],
            }
            for meta in self.storage.iter_objects(bucket)
        ]
        return sorted(objects, key=lambda o: o["name"])

    def read_object(self, bucket: str, path: str) -> bytes:
        if self.storage.read_meta(bucket, path) is None:
            raise FileNotFoundError(f"{bucket}/{path}")
        return self.storage.data_path(bucket, path).read_bytes()

    # --- between tests -------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty importer tables (keeping seeded system classes) and buckets; clear faults and counters.

        Missing importer tables (a test dropped one) are recreated by re-applying the migrations.
        Requests still in flight (a slow one whose client timed out) finish first, so they cannot
        land in the next test.
        """
        if self._gateway is not None:
            self._gateway.wait_idle()
        self.faults = StackFaults()
        self._counters.reset()
        missing = self.sql(
            "select count(*) as n from unnest(array["
            + ",".join(f"'{t}'" for t in IMPORTER_TABLES)
            + "]) as t(name) where to_regclass('public.' || t.name) is null"
        )[0]["n"]
        if missing and self.migrate:
            self.apply_migrations()
            missing = 0
        if not missing:
            self._postgres.run(RESET_SQL, single_transaction=True)
        self.storage.delete_all_buckets()
        self._ensure_buckets()
