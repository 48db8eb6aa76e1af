"""RoboflowEmulator: the object tests and benchmarks start, query and reconfigure."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading

from .config import EmulatorConfig, FaultConfig
from .dataset import Dataset
from .server import make_server
from .state import EmulatorState


class RoboflowEmulator:
    """A local Roboflow API plus CDN, serving a seeded project until stopped.

    >>> with RoboflowEmulator(EmulatorConfig(image_count=10)) as emu:
    ...     emu.api_url  # doctest: +SKIP
    """

    def __init__(self, config: EmulatorConfig | None = None, faults: FaultConfig | None = None):
        self.config = config or EmulatorConfig()
        self.dataset = Dataset(self.config)
        self._state = EmulatorState(self.config, self.dataset, faults or FaultConfig())
        self._servers: list = []
        self._threads: list[threading.Thread] = []
        self._export_dir: str | None = None

    def start(self) -> RoboflowEmulator:
        if self._servers:
            return self
        api_server = make_server(self.config.host, self.config.port, self._state, "api")
        try:
            cdn_server = make_server(self.config.host, self.config.cdn_port, self._state, "cdn")
        except OSError:
            api_server.server_close()
            raise
        self._servers = [api_server, cdn_server]
        self._export_dir = tempfile.mkdtemp(prefix="roboflow-emulator-")
        self._state.api.context.export_dir = self._export_dir
        self._state.api.context.cdn_url = self.cdn_url
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"roboflow-emulator-{server.kind}"
            )
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and delete built export ZIPs."""
        stoppers = [threading.Thread(target=server.shutdown) for server in self._servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in self._servers:
            server.close_idle_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []
        if self._export_dir:
            shutil.rmtree(self._export_dir, ignore_errors=True)
            self._export_dir = None

    def __enter__(self) -> RoboflowEmulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _url_of(self, index: int) -> str:
        if not self._servers:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        host, port = self._servers[index].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """API root: what the SDK's API_URL and the pipeline's --roboflow_api_url point at."""
        return self._url_of(0)

    @property
    def cdn_url(self) -> str:
        """Origin of image URLs (``/{owner}/{id}/original.jpg``) and export download links."""
        return self._url_of(1)

    def counters(self) -> dict[str, int]:
        """Requests per route, per status (``status:429``), per route and status, and per fault fired."""
        return self._state.counters()

    def reset_counters(self) -> None:
        self._state.reset_counters()

    def timeline(self) -> list[dict[str, float]]:
        """The rate limiter's seconds: limit in force, calls let through, calls answered 429."""
        buckets = self._state.buckets
        return buckets.timeline() if buckets is not None else []

    @property
    def faults(self) -> FaultConfig:
        return self._state.fault_state.config

    @faults.setter
    def faults(self, faults: FaultConfig) -> None:
        self._state.set_faults(faults)

    def set_faults(self, faults: FaultConfig | None = None, **changes) -> FaultConfig:
        """Replace the faults, or change some fields of the current ones; counts and targets start over."""
        base = faults if faults is not None else self.faults
        updated = dataclasses.replace(base, **changes) if changes else base
        self._state.set_faults(updated)
        return updated

    def fault_targets(self) -> dict[str, list[str]]:
        """Image ids picked by the count-based faults, plus those with an /undefined/ original URL."""
        return self._state.fault_targets()

    def original_url(self, image_id: str) -> str:
        record = self.dataset.image(image_id)
        return f"{self.cdn_url}/{record.owner}/{record.id}/original.jpg"

    def thumb_url(self, image_id: str) -> str:
        record = self.dataset.image(image_id)
        return f"{self.cdn_url}/{record.owner}/{record.id}/thumb.jpg"
