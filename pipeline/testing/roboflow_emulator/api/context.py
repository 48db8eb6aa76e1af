"""The emulated account as every handler sees it: settings, dataset, image bytes, and where its files live."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import quote

from ..config import EmulatorConfig
from ..dataset import Dataset, ImageRecord, seeded_rng
from ..images import ImageFactory


@dataclass
class ApiContext:
    """`cdn_url` and `export_dir` are known only once the emulator's servers listen (RoboflowEmulator.start)."""

    config: EmulatorConfig
    dataset: Dataset
    images: ImageFactory
    signing_key: bytes
    cdn_url: str = ""
    export_dir: str | None = None

    def original_url(self, record: ImageRecord, undefined: bool) -> str:
        return f"{self.cdn_url}/{record.owner}/{'undefined' if undefined else record.id}/original.jpg"

    def thumb_url(self, record: ImageRecord) -> str:
        return f"{self.cdn_url}/{record.owner}/{record.id}/thumb.jpg"

    def annotation_url(self, record: ImageRecord) -> str:
        return f"{self.cdn_url}/{record.owner}/{record.id}/annotation-{quote(self.dataset.annotation_group)}.json"

    def embedding(self, record: ImageRecord) -> list[float]:
        rng = seeded_rng(self.config.seed, "embedding", record.id)
        vector = [rng.gauss(0.0, 1.0) for _ in range(self.config.embedding_dim)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [round(v / norm, 6) for v in vector]
