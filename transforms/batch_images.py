"""Step 2: group image ids into batches of ``--batch_size`` (50) with sharded keys.

Keys are a stable hash of the id modulo ``shards`` (``hash()`` of a str is salted per process, so
``zlib.crc32`` instead); ``GroupIntoBatches`` fills batches per key and a ``Reshuffle`` after it
spreads the batches over workers, because the stateful grouping stage itself runs on one thread.

    batches = ids | BatchImages(batch_size=50, shards=16)
"""

from __future__ import annotations

import zlib

import apache_beam as beam


def shard_of(image_id: str, shards: int) -> int:
    return zlib.crc32(image_id.encode("utf-8")) % shards


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
            | "ShardKey" >> beam.Map(lambda image_id: (shard_of(image_id, shards), image_id)).with_output_types(
                tuple[int, str])
            | "GroupIntoBatches" >> beam.GroupIntoBatches(self.batch_size)
            | "ToList" >> beam.Map(lambda keyed: sorted(keyed[1]))
            | "Spread" >> beam.Reshuffle()
        )
