"""One object per key per worker process, leased by every DoFn copy that needs it; the last lease closes it.

Beam makes a DoFn copy per bundle processor (16 threads locally), and the Roboflow rate limit, the
HTTP pools and the step thread pools must be one per process, so every copy leases the same object.
Beam's ``apache_beam.utils.shared.Shared`` keeps weak references: a copy that kept only the pool and
dropped the holder made a new pool at nearly every ``setup()`` (measured: ~1,550 pool threads in one
16-worker process instead of 2 x 80), and nothing ever closed what it held, so an importer called
again and again inside the platform's backend kept every HTTP pool of every earlier import. A lease
count does both jobs: ``setup()`` leases, ``teardown()`` releases, the last release closes.

    lease = PROCESS_SHARED.lease(("pool", "upload", 20), make=lambda: ThreadPoolExecutor(80),
                                 close=lambda pool: pool.shutdown(wait=False))
    pool = lease.value
    lease.release()          # idempotent; the last one closes the pool
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lease(Generic[T]):
    """A holder's claim on a shared object; ``release()`` once done (twice is harmless)."""

    def __init__(self, owner: ProcessShared, key: Hashable, value: T):
        self._owner = owner
        self._key = key
        self.value = value
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self._key)


class ProcessShared:
    """Objects keyed by what makes them different (config, key digest); made on first lease."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, list] = {}  # key -> [object, leases, close]

    def lease(self, key: Hashable, make: Callable[[], T], close: Callable[[T], None]) -> Lease[T]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [make(), 0, close]
            entry[1] += 1
            return Lease(self, key, entry[0])

    def _release(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries[key]
            entry[1] -= 1
            if entry[1]:
                return
            del self._entries[key]
        entry[2](entry[0])  # outside the lock: closing may wait on I/O

    def leases(self, key: Hashable) -> int:
        with self._lock:
            entry = self._entries.get(key)
            return entry[1] if entry else 0


PROCESS_SHARED = ProcessShared()
