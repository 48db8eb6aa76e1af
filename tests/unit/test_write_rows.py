"""WriteRowsFn narrows a failed batch down to the image whose row breaks a constraint."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest

from tests.unit.test_convert import CLASS_PERSON, make_ctx, make_details, make_stored
from transforms import write_rows
from transforms.clients.resources import SupabaseConfig
from transforms.core.records import Box
from transforms.core.retry import PermanentError, TransientError
from transforms.core.secrets import SecretRef
from transforms.core.shared import Lease, ProcessShared


class FakeTables:
    """Keeps upserted rows by table; refuses a whole request with a row naming a poisoned Roboflow id, as
    PostgREST does with one bad row in a bulk upsert (the statement is one transaction)."""

    def __init__(self, poisoned: set[str] = frozenset(), outage: bool = False):
        self.poisoned = poisoned
        self.outage = outage
        self.rows: dict[str, dict[str, dict]] = {}
        self.requests = 0

    def object_url(self, path: str) -> str:
        return f"https://example.supabase.co/storage/v1/object/public/od-images/{path}"

    def upsert(self, table, rows, *, on_conflict, ignore_duplicates=False):
        self.requests += 1
        if self.outage:
            raise TransientError("server_error", "503 after every retry")
        if any(bad in json.dumps(row) for row in rows for bad in self.poisoned):
            raise PermanentError("constraint_violation", "23514 violates check constraint")
        for row in rows:
            self.rows.setdefault(table, {})[row.get("id") or f"{row['dataset_id']}:{row['image_id']}"] = row

    def delete_stale_annotations(self, dataset_id, image_id, keep_keys):
        self.requests += 1


@pytest.fixture
def write_fn(monkeypatch):
    def make(tables: FakeTables) -> write_rows.WriteRowsFn:
        monkeypatch.setattr(write_rows, "supabase_client", lambda config: Lease(ProcessShared(), "fake", tables))
        fn = write_rows.WriteRowsFn(SupabaseConfig("https://example.supabase.co", SecretRef(env_var="NONE")),
                                    make_ctx())
        fn.setup()
        return fn
    return make


def batch_of(n: int):
    box = Box("person", 100, 150, 50, 80)
    return [make_stored(make_details([box], image_id=f"image{i:02d}xxxxxxxxxxxxxxx")) for i in range(n)]


def test_one_permanently_failing_row_dead_letters_only_its_image(write_fn):
    batch = batch_of(8)
    bad = batch[5].details.image_id
    tables = FakeTables(poisoned={bad})
    out = list(write_fn(tables).process(batch))
    letters = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    written = [o for o in out if isinstance(o, str)]
    assert [(letter.image_id, letter.error_type) for letter in letters] == [(bad, "constraint_violation")]
    assert sorted(written) == sorted(s.details.image_id for s in batch if s.details.image_id != bad)
    stored = json.dumps(tables.rows)
    assert bad not in stored and len(tables.rows["od_images"]) == 7
    assert len(tables.rows["od_dataset_images"]) == 7
    assert all(a["class_id"] == CLASS_PERSON for a in tables.rows["od_annotations"].values())
    # Halving: 8 -> 4 -> 2 -> 1 around the bad image, never one request per image of the batch.
    assert tables.requests < 8 * 3


def test_retries_exhausted_dead_letter_the_whole_batch_without_halving(write_fn):
    batch = batch_of(4)
    tables = FakeTables(outage=True)
    out = list(write_fn(tables).process(batch))
    letters = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert sorted(letter.image_id for letter in letters) == sorted(s.details.image_id for s in batch)
    assert {letter.error_type for letter in letters} == {"server_error"} and tables.requests == 1
