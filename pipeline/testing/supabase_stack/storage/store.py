"""What Storage holds: buckets (settings, limits) and objects (bytes + a JSON sidecar) on disk under `root`.

No HTTP and no roles here: the routes decide who may call what; this keeps what is stored consistent
under concurrent gateway threads, with the real server's rules on names, limits and existing keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

from .uploads import UploadedFile
from .wire import (
    already_exists,
    bucket_already_exists,
    bucket_not_empty,
    bucket_too_large,
    invalid_bucket_name,
    invalid_request,
    no_such_bucket,
)

DEFAULT_FILE_SIZE_LIMIT = 52428800  # self-hosted Storage's FILE_SIZE_LIMIT default, in bytes
VALID_KEY = re.compile(r"^(\w|/|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)*$", re.ASCII)
VALID_BUCKET = re.compile(r"^(\w|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)+$", re.ASCII)
SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}  # real server: decimal units


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_size(value: object) -> int | None:
    """`file_size_limit` as Storage accepts it: bytes as an int, or '20MB' / '30KB' / '3B' in decimal units."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", str(value).upper())
    if not match:
        raise invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


class StorageStore:
    """Buckets and objects on disk; every write is a rename, so a reader never sees half of one."""

    def __init__(self, root: Path, global_file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT,
                 standard_upload_size_limit: int | None = None):
        self.root = root
        self.global_file_size_limit = global_file_size_limit
        # real server: standard (non-TUS) uploads have their own cap (UPLOAD_FILE_SIZE_LIMIT_STANDARD); None = global
        self.standard_upload_size_limit = standard_upload_size_limit
        self._bucket_dir = root / "buckets"
        self._object_dir = root / "objects"
        self._tmp_dir = root / "tmp"
        for directory in (self._bucket_dir, self._object_dir, self._tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._locks = [threading.Lock() for _ in range(64)]
        self._bucket_lock = threading.Lock()
        self._bucket_cache: dict[str, dict | None] = {}

    def _lock_for(self, bucket: str, name: str) -> threading.Lock:
        return self._locks[hash((bucket, name)) % len(self._locks)]

    def upload_size_limit(self, bucket: dict) -> int:
        """The effective limit of a standard upload into ``bucket``: the smallest of the three that are set."""
        limits = [self.global_file_size_limit, bucket.get("file_size_limit"), self.standard_upload_size_limit]
        return min(limit for limit in limits if limit)

    # --- buckets -------------------------------------------------------------------------------

    def _bucket_path(self, bucket_id: str) -> Path:
        return self._bucket_dir / (quote(bucket_id, safe="") + ".json")

    def get_bucket(self, bucket_id: str) -> dict | None:
        """The bucket's settings (cached; every write below goes through _write_bucket or _forget_bucket)."""
        if bucket_id not in self._bucket_cache:
            try:
                self._bucket_cache[bucket_id] = json.loads(self._bucket_path(bucket_id).read_text())
            except FileNotFoundError:
                self._bucket_cache[bucket_id] = None
        bucket = self._bucket_cache[bucket_id]
        return dict(bucket) if bucket is not None else None

    def _forget_bucket(self, bucket_id: str) -> None:
        self._bucket_path(bucket_id).unlink(missing_ok=True)
        self._bucket_cache.pop(bucket_id, None)

    def list_buckets(self) -> list[dict]:
        return sorted(
            (json.loads(path.read_text()) for path in self._bucket_dir.glob("*.json")), key=lambda b: b["name"]
        )

    def _write_bucket(self, bucket: dict) -> None:
        tmp = self._tmp_dir / f"bucket-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(bucket))
        os.replace(tmp, self._bucket_path(bucket["id"]))
        self._bucket_cache[bucket["id"]] = dict(bucket)

    def create_bucket(
        self,
        bucket_id: str,
        *,
        name: str | None = None,
        public: bool = False,
        file_size_limit: object = None,
        allowed_mime_types: list[str] | None = None,
    ) -> dict:
        if not bucket_id or not VALID_BUCKET.match(bucket_id) or len(bucket_id) > 100:
            raise invalid_bucket_name()
        limit = parse_size(file_size_limit)
        if limit is not None and limit > self.global_file_size_limit:
            raise bucket_too_large()
        now = now_iso()
        bucket = {
            "id": bucket_id,
            "name": name or bucket_id,
            "owner": "",
            "owner_id": None,
            "public": bool(public),
            "type": "STANDARD",
            "file_size_limit": limit,
            "allowed_mime_types": [m for m in allowed_mime_types if m] if allowed_mime_types else None,
            "created_at": now,
            "updated_at": now,
        }
        with self._bucket_lock:
            if self.get_bucket(bucket_id) is not None:
                raise bucket_already_exists()
            self._write_bucket(bucket)
            (self._object_dir / quote(bucket_id, safe="")).mkdir(exist_ok=True)
        return bucket

    def update_bucket(self, bucket_id: str, changes: dict) -> dict:
        with self._bucket_lock:
            bucket = self.get_bucket(bucket_id)
            if bucket is None:
                raise no_such_bucket()
            if "public" in changes and changes["public"] is not None:
                bucket["public"] = bool(changes["public"])
            if "file_size_limit" in changes:
                bucket["file_size_limit"] = parse_size(changes["file_size_limit"])
            if "allowed_mime_types" in changes:
                bucket["allowed_mime_types"] = changes["allowed_mime_types"] or None
            bucket["updated_at"] = now_iso()
            self._write_bucket(bucket)
        return bucket

    def empty_bucket(self, bucket_id: str) -> None:
        if self.get_bucket(bucket_id) is None:
            raise no_such_bucket()
        directory = self._object_dir / quote(bucket_id, safe="")
        doomed = self._tmp_dir / f"empty-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory, doomed)
        directory.mkdir(exist_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)

    def delete_bucket(self, bucket_id: str) -> None:
        with self._bucket_lock:
            if self.get_bucket(bucket_id) is None:
                raise no_such_bucket()
            if any(True for _ in self.iter_objects(bucket_id)):
                raise bucket_not_empty()
            self._forget_bucket(bucket_id)
            shutil.rmtree(self._object_dir / quote(bucket_id, safe=""), ignore_errors=True)

    def delete_all_buckets(self) -> None:
        with self._bucket_lock:
            for bucket in self.list_buckets():
                self._forget_bucket(bucket["id"])
        shutil.rmtree(self._object_dir, ignore_errors=True)
        self._object_dir.mkdir()

    # --- objects on disk -----------------------------------------------------------------------

    def _folder(self, bucket: str, folders: list[str]) -> Path:
        directory = self._object_dir / quote(bucket, safe="")
        for segment in folders:
            directory = directory / (quote(segment, safe="") + ".d")
        return directory

    def _paths(self, bucket: str, name: str) -> tuple[Path, Path, Path]:
        """(directory, data file, sidecar): `a/b.jpg` -> `a.d/b.jpg.obj` so `a` and `a/b` can coexist."""
        segments = name.split("/")
        directory = self._folder(bucket, segments[:-1])
        stem = quote(segments[-1], safe="")
        return directory, directory / (stem + ".obj"), directory / (stem + ".meta.json")

    def read_meta(self, bucket: str, name: str) -> dict | None:
        try:
            return json.loads(self._paths(bucket, name)[2].read_text())
        except FileNotFoundError:
            return None

    def data_path(self, bucket: str, name: str) -> Path:
        return self._paths(bucket, name)[1]

    def iter_objects(self, bucket: str):
        """Every object's sidecar in a bucket, depth first."""
        base = self._object_dir / quote(bucket, safe="")
        for directory, _dirs, files in os.walk(base):
            for filename in files:
                if filename.endswith(".meta.json"):
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        yield json.loads(Path(directory, filename).read_text())

    def folder_entries(self, bucket: str, prefix: str, search: str) -> list[tuple[str, dict | None]]:
        """One folder level below `prefix` (empty or ending in '/'): (name, sidecar) per object and
        (name, None) per folder that holds objects, for names starting with `search` (lower case), unsorted."""
        directory = self._folder(bucket, prefix.split("/")[:-1])
        entries: list[tuple[str, dict | None]] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                if entry.name.endswith(".meta.json"):
                    display = unquote(entry.name[: -len(".meta.json")])
                    if display.lower().startswith(search):
                        with contextlib.suppress(FileNotFoundError, ValueError):
                            entries.append((display, json.loads(Path(entry.path).read_text())))
                elif entry.name.endswith(".d") and entry.is_dir():
                    display = unquote(entry.name[:-2])
                    if display.lower().startswith(search) and self._has_objects(Path(entry.path)):
                        entries.append((display, None))
        return entries

    @staticmethod
    def _has_objects(directory: Path) -> bool:
        return any(f.endswith(".meta.json") for _d, _s, files in os.walk(directory) for f in files)

    def put_object(self, bucket: str, name: str, upload: UploadedFile, *, upsert: bool) -> dict:
        """Store bytes then sidecar; a sidecar marks existence, so readers never see half an object."""
        directory, data_path, meta_path = self._paths(bucket, name)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_dir / f"upload-{uuid.uuid4().hex}"
        tmp.write_bytes(upload.data)
        now = now_iso()
        cache_control = upload.cache_control or "no-cache"  # real server: no-cache when none is given
        if cache_control.isdigit():
            cache_control = f"max-age={cache_control}"
        # real server: "must not exist" is checked before the bytes are stored, and the row is written with
        # an upsert afterwards, so two concurrent uploads of one key without x-upsert both succeed (the last
        # one wins). The check sits outside the object's lock for the same race.
        if not upsert and self.read_meta(bucket, name) is not None:
            tmp.unlink()
            raise already_exists()
        with self._lock_for(bucket, name):
            previous = self.read_meta(bucket, name)
            meta = {
                "id": previous["id"] if previous else str(uuid.uuid4()),
                "bucket_id": bucket,
                "name": name,
                "size": len(upload.data),
                "mimetype": upload.mimetype,
                "cache_control": cache_control,
                "etag": '"' + hashlib.md5(upload.data).hexdigest() + '"',
                "user_metadata": upload.user_metadata,
                "created_at": previous["created_at"] if previous else now,
                "updated_at": now,
                "last_accessed_at": now,
                "version": str(uuid.uuid4()),
            }
            os.replace(tmp, data_path)
            meta_tmp = self._tmp_dir / f"meta-{uuid.uuid4().hex}"
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, meta_path)
        return meta

    def delete_object(self, bucket: str, name: str) -> dict | None:
        _directory, data_path, meta_path = self._paths(bucket, name)
        with self._lock_for(bucket, name):
            meta = self.read_meta(bucket, name)
            if meta is None:
                return None
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
        return meta
