"""A stand-in for Google Cloud Storage under Beam's own ``gs://`` filesystem, for offline tests.

Beam routes every ``gs://`` path through ``GCSFileSystem`` (path parsing, globbing, the write-then-
rename of ``WriteToText``, deletes), which asks ``GCSFileSystem._gcsIO()`` for a ``GcsIO`` object that
talks to the storage API. :func:`install` replaces only that last object with :class:`LocalGcsIO`,
which keeps objects as files under a local directory (``gs://b/a/c`` -> ``root/b/a/c``), so the code
the importer runs on Dataflow runs here unchanged, minus the network.

    store = install(monkeypatch, tmp_path / "gcs")
    store.read("gs://bucket/run/summary.json")
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from apache_beam.io.gcp import gcsfilesystem, gcsio


class LocalGcsIO:
    """The part of ``apache_beam.io.gcp.gcsio.GcsIO`` that ``GCSFileSystem`` calls, over a local directory."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def local(self, path: str) -> Path:
        bucket, name = gcsio.parse_gcs_path(path, object_optional=True)
        return self.root / bucket / name

    def _note(self, what: str) -> None:
        with self._lock:
            self.calls.append(what)

    def read(self, path: str) -> bytes:
        return self.local(path).read_bytes()

    def open(self, filename, mode="r", read_buffer_size=16 * 1024 * 1024, mime_type="application/octet-stream"):
        self._note("open:" + mode)
        target = self.local(filename)
        if mode.startswith("r"):
            return target.open("rb")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.open("wb")

    def list_files(self, path, with_metadata=False):
        self._note("list")
        bucket, prefix = gcsio.parse_gcs_path(path, object_optional=True)
        base = self.root / bucket
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for file in sorted(files):
                full = Path(dirpath, file)
                name = full.relative_to(base).as_posix()
                if name.startswith(prefix):
                    stat = full.stat()
                    gcs_path = f"gs://{bucket}/{name}"
                    yield (gcs_path, (stat.st_size, stat.st_mtime)) if with_metadata else (gcs_path, stat.st_size)

    def exists(self, path):
        return self.local(path).is_file()

    def _status(self, path):
        stat = self.local(path).stat()
        return {"size": stat.st_size, "updated": stat.st_mtime}

    def size(self, path):
        return self._status(path)["size"]

    def last_updated(self, path):
        return self._status(path)["updated"]

    def checksum(self, path):
        return hashlib.md5(self.read(path)).hexdigest()

    def copy(self, src, dest):
        self._note("copy")
        target = self.local(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.local(src), target)

    def copy_batch(self, src_dest_pairs):
        out = []
        for src, dest in src_dest_pairs:
            try:
                self.copy(src, dest)
                out.append((src, dest, None))
            except OSError as exc:
                out.append((src, dest, exc))
        return out

    def delete(self, path, recursive=False):
        self._note("delete")
        if recursive:
            for found, _size in list(self.list_files(path)):
                self.local(found).unlink()
        else:
            self.local(path).unlink(missing_ok=True)

    def delete_batch(self, paths):
        out = []
        for path in paths:
            try:
                self.delete(path)
                out.append((path, None))
            except OSError as exc:
                out.append((path, exc))
        return out


def install(monkeypatch, root: Path) -> LocalGcsIO:
    """Serve every ``gs://`` path of this process from ``root`` until the test ends."""
    store = LocalGcsIO(root)
    monkeypatch.setattr(gcsfilesystem.GCSFileSystem, "_gcsIO", lambda self: store)
    return store
