"""EmulatorState: what the request handlers of the API host and the CDN host share (handlers, faults, counters)."""

from __future__ import annotations

import threading
from collections import Counter

from .api.routes import RoboflowApi
from .config import EmulatorConfig, FaultConfig
from .dataset import Dataset
from .faults import FaultState, TokenBuckets
from .images import ImageFactory


class EmulatorState:
    """Everything the request handlers of both servers share."""

    def __init__(self, config: EmulatorConfig, dataset: Dataset, faults: FaultConfig):
        self.config = config
        self.dataset = dataset
        self.images = ImageFactory(config.seed)
        self.api = RoboflowApi(config, dataset, self.images)
        self._counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self.fault_state = FaultState(faults, dataset, config.seed)
        self.buckets = self._make_buckets(faults)

    @staticmethod
    def _make_buckets(faults: FaultConfig) -> TokenBuckets | None:
        if faults.rate_limit_per_s is None:
            return None
        return TokenBuckets(faults.rate_limit_per_s, faults.rate_limit_burst_s, faults.rate_limit_burst,
                            change_to=faults.rate_limit_change_per_s,
                            after_calls=faults.rate_limit_change_after_calls,
                            after_s=faults.rate_limit_change_after_s)

    def set_faults(self, faults: FaultConfig) -> None:
        self.fault_state = FaultState(faults, self.dataset, self.config.seed)
        self.buckets = self._make_buckets(faults)

    def count(self, *names: str) -> None:
        with self._counter_lock:
            for name in names:
                self._counters[name] += 1

    def counters(self) -> dict[str, int]:
        with self._counter_lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self._counter_lock:
            self._counters.clear()

    def fault_targets(self) -> dict[str, list[str]]:
        targets = {name: [self.dataset.id_of(i) for i in indices] for name, indices in self.fault_state.targets.items()}
        targets["undefined_url"] = [
            image_id for image_id in self.dataset.image_ids if self.fault_state.has_undefined_url(image_id)
        ]
        return targets
