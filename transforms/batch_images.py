"""Step 2: group image ids into batches of ``--batch_size`` (50) with sharded keys.

Keys are a stable hash of the id modulo ``shards`` (``hash()`` of a str is salted per process, so
``zlib.crc32`` instead); ``GroupIntoBatches`` fills batches per key and a ``Reshuffle`` after it
spreads the batches over workers, because the stateful grouping stage itself runs on one thread.

    batches = ids | BatchImages(batch_size=50, shards=16)

Elements are image ids or :class:`ListedImage` (an id with its listing summary's fingerprint).
"""

from __future__ import annotations

import zlib
from typing import Any

import apache_beam as beam

from transforms.core.records import ListedImage


def shard_of(image_id: str, shards: int) -> int:
    return zlib.crc32(image_id.encode("utf-8")) % shards


def listed_id(item: ListedImage | str) -> str:
    return item if isinstance(item, str) else item.image_id


class BatchImages(beam.PTransform):
    def __init__(self, batch_size: int, shards: int):
        super().__init__()
        if batch_size < 1 or shards < 1:
            raise ValueError("batch_size and shards must be positive")
        self.batch_size = batch_size
        self.shards = shards

    def expand(self, ids):
        shards = self.shards
        return (
            ids
            | "ShardKey" >> beam.Map(lambda item: (shard_of(listed_id(item), shards), item)).with_output_types(
                tuple[int, Any])
            | "GroupIntoBatches" >> beam.GroupIntoBatches(self.batch_size)
            | "ToList" >> beam.Map(lambda keyed: sorted(keyed[1], key=listed_id))
            | "Spread" >> beam.Reshuffle()
        )
