"""The SQL migrations in pipeline/migrations: the reference schema on a fresh database, idempotent
re-application, application on top of the platform's drifted live schema, and the bulk counter.

Each test works in its own scratch database inside the session stack's cluster; tests that go through
PostgREST use the stack's API database.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from postgrest.exceptions import APIError

from pipeline.testing.supabase_stack import SqlError, migration_files

LIVE_SCHEMA_FIXTURE = Path(__file__).parent / "fixtures" / "platform_live_schema.sql"
DATASET = "11111111-1111-1111-1111-111111111111"
IMPORT_KEYS = {
    ("od_images", "od_images_source_ref_unique"): "UNIQUE (source_ref)",
    ("od_images", "od_images_storage_unique"): "UNIQUE (storage_bucket, storage_path)",
    ("od_annotations", "od_annotations_source_unique"): "UNIQUE (dataset_id, image_id, source_key)",
    ("od_classes", "od_classes_dataset_name_unique"): "UNIQUE (dataset_id, name)",
}

SCHEMA_SNAPSHOT_SQL = """
select 'column' as kind, table_name || '.' || column_name as name,
       concat_ws(' ', data_type, column_default, is_nullable) as definition
  from information_schema.columns where table_schema = 'public' and table_name like 'od\\_%'
union all
select 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  from pg_constraint where connamespace = 'public'::regnamespace
union all
select 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
  from pg_trigger where not tgisinternal and tgrelid::regclass::text like 'od\\_%'
union all
select 'index', indexname, indexdef from pg_indexes where schemaname = 'public'
union all
select 'function', p.oid::regprocedure::text, md5(p.prosrc) from pg_proc p  -- with its arguments: overloads
 where p.pronamespace = 'public'::regnamespace
order by 1, 2
"""


@pytest.fixture
def scratch_db(supabase_stack):
    """A fresh database bootstrapped like Supabase's (extensions schema, API roles), dropped afterwards."""
    name = f"migrations_{uuid.uuid4().hex[:10]}"
    supabase_stack.create_database(name)
    try:
        yield name
    finally:
        supabase_stack.drop_database(name)


def apply(stack, database: str, files: list[Path] | None = None) -> None:
    for path in files if files is not None else migration_files():
        stack.execute_sql(path.read_text(), database=database)


def snapshot(stack, database: str) -> list[dict]:
    return stack.sql(SCHEMA_SNAPSHOT_SQL, database=database)


def constraints(stack, database: str) -> dict[tuple[str, str], str]:
    rows = stack.sql(
        "select conrelid::regclass::text as t, conname as n, pg_get_constraintdef(oid) as d "
        "from pg_constraint where connamespace = 'public'::regnamespace",
        database=database,
    )
    return {(r["t"], r["n"]): r["d"] for r in rows}


def counter_triggers(stack, database: str) -> list[dict]:
    return stack.sql(
        "select t.tgname as name, (t.tgtype & 1) = 1 as per_row from pg_trigger t "
        "join pg_proc p on p.oid = t.tgfoid where t.tgrelid = 'od_dataset_images'::regclass "
        "and not t.tgisinternal and p.prosrc ilike '%image_count%' order by 1",
        database=database,
    )


def migration(prefix: str) -> Path:
    [path] = [p for p in migration_files() if p.name.startswith(prefix)]
    return path


def test_migrations_are_numbered_files_in_order():
    names = [p.name for p in migration_files()]
    assert names == sorted(names)
    assert names[:3] == ["0001_platform_schema.sql", "0002_idempotent_import.sql", "0003_bulk_counters.sql"]


def test_fresh_database_gets_the_reference_schema(supabase_stack, scratch_db):
    apply(supabase_stack, scratch_db)

    found = constraints(supabase_stack, scratch_db)
    for key, definition in IMPORT_KEYS.items():
        assert found[key] == definition
    assert "UNIQUE (dataset_id, image_id)" in {d for (t, _n), d in found.items() if t == "od_dataset_images"}
    split_check = found[("od_dataset_images", "od_dataset_images_split_check")]
    assert all(f"'{split}'" in split_check for split in ("train", "val", "valid", "test"))
    assert "'import'" in found[("od_images", "od_images_source_check")]
    assert found[("od_annotations", "od_annotations_class_id_fkey")].endswith("ON DELETE RESTRICT")

    columns = {
        (r["table_name"], r["column_name"]): r
        for r in supabase_stack.sql(
            "select table_name, column_name, column_default, is_nullable, data_type "
            "from information_schema.columns where table_schema = 'public'",
            database=scratch_db,
        )
    }
    assert columns[("od_images", "id")]["column_default"] == "uuid_generate_v4()"
    assert columns[("od_images", "source")]["column_default"] == "'upload'::text"
    assert columns[("od_images", "storage_bucket")]["column_default"] == "'od-images'::text"
    assert columns[("od_images", "width")]["is_nullable"] == "NO"
    assert columns[("od_annotations", "bbox_x")]["data_type"] == "real"
    assert columns[("od_classes", "color")]["column_default"] == "'#3B82F6'::text"
    for table, column in [
        ("od_images", "source_ref"),
        ("od_images", "file_hash"),
        ("od_images", "storage_path"),
        ("od_annotations", "source_key"),
        ("od_datasets", "image_count"),
    ]:
        assert (table, column) in columns

    partial = supabase_stack.sql(
        "select indexname from pg_indexes where schemaname = 'public' and indexdef like '%WHERE%' order by 1",
        database=scratch_db,
    )
    assert [r["indexname"] for r in partial] == ["idx_od_annotations_ai_generated", "idx_od_images_buybuddy_image_id"]

    system = supabase_stack.sql(
        "select count(*) as n, count(distinct name) as names from od_classes where is_system and dataset_id is null",
        database=scratch_db,
    )
    assert system == [{"n": 7, "names": 7}]
    grants = supabase_stack.sql(
        "select bool_and(has_table_privilege(r, 'public.' || t, 'INSERT,SELECT,UPDATE,DELETE')) as ok "
        "from unnest(array['anon','authenticated','service_role']) r, "
        "unnest(array['od_datasets','od_classes','od_images','od_dataset_images','od_annotations']) t",
        database=scratch_db,
    )
    assert grants == [{"ok": True}]


def test_applying_all_migrations_twice_changes_nothing(supabase_stack, scratch_db):
    apply(supabase_stack, scratch_db)
    once = snapshot(supabase_stack, scratch_db)
    apply(supabase_stack, scratch_db)
    assert snapshot(supabase_stack, scratch_db) == once
    assert supabase_stack.sql("select count(*) as n from od_classes", database=scratch_db) == [{"n": 7}]


def test_migrations_apply_on_top_of_the_drifted_live_schema(supabase_stack, scratch_db):
    supabase_stack.execute_sql(LIVE_SCHEMA_FIXTURE.read_text(), database=scratch_db)

    apply(supabase_stack, scratch_db)

    found = constraints(supabase_stack, scratch_db)
    for key, definition in IMPORT_KEYS.items():
        assert found[key] == definition
    assert found[("od_dataset_images", "od_dataset_images_dataset_image_unique")] == "UNIQUE (dataset_id, image_id)"
    assert ("od_classes", "od_classes_name_key") not in found
    assert ("od_dataset_images", "od_dataset_images_split_chk") not in found
    assert "'valid'" in found[("od_dataset_images", "od_dataset_images_split_check")]
    assert "'url'" in found[("od_images", "od_images_source_check")]

    kept = supabase_stack.sql(
        "select (select count(*) from od_images) as images, (select count(*) from od_annotations) as boxes, "
        "(select file_hash from od_images where filename = 'a.jpg') as md5, "
        "(select count(*) from od_classes) as classes, (select storage_bucket from od_images limit 1) as bucket",
        database=scratch_db,
    )
    assert kept == [
        {"images": 2, "boxes": 2, "md5": "d41d8cd98f00b204e9800998ecf8427e", "classes": 1, "bucket": "od-images"}
    ]
    assert [t["per_row"] for t in counter_triggers(supabase_stack, scratch_db)] == [False, False, False]
    assert supabase_stack.sql("select image_count from od_datasets", database=scratch_db) == [{"image_count": 2}]

    once = snapshot(supabase_stack, scratch_db)
    apply(supabase_stack, scratch_db)
    assert snapshot(supabase_stack, scratch_db) == once


def test_0001_alone_installs_the_platforms_per_row_counter_and_0003_replaces_it(supabase_stack, scratch_db):
    first, second, third = migration("0001"), migration("0002"), migration("0003")
    apply(supabase_stack, scratch_db, [first, second])
    assert counter_triggers(supabase_stack, scratch_db) == [{"name": "update_dataset_image_count", "per_row": True}]

    apply(supabase_stack, scratch_db, [third])
    assert [t["per_row"] for t in counter_triggers(supabase_stack, scratch_db)] == [False, False, False]
    apply(supabase_stack, scratch_db, [first])
    assert all(not t["per_row"] for t in counter_triggers(supabase_stack, scratch_db))


def test_statement_level_counter_keeps_image_count_exact(supabase_stack, scratch_db):
    apply(supabase_stack, scratch_db)
    other = "22222222-2222-2222-2222-222222222222"
    supabase_stack.execute_sql(
        f"""
        insert into od_datasets (id, name) values ('{DATASET}', 'a'), ('{other}', 'b');
        insert into od_images (filename, image_url, width, height, source_ref)
          select 'f' || i, 'u' || i, 1, 1, 'rf:' || i from generate_series(1, 3000) i;
        insert into od_dataset_images (dataset_id, image_id) select '{DATASET}', id from od_images;
        insert into od_dataset_images (dataset_id, image_id) select '{DATASET}', id from od_images
          on conflict (dataset_id, image_id) do nothing;
        """,
        database=scratch_db,
    )

    def counts() -> dict[str, int]:
        rows = supabase_stack.sql("select id, image_count from od_datasets", database=scratch_db)
        return {r["id"]: r["image_count"] for r in rows}

    assert counts() == {DATASET: 3000, other: 0}
    supabase_stack.execute_sql(
        f"update od_dataset_images set dataset_id = '{other}' where image_id in "
        "(select id from od_images where source_ref in ('rf:1', 'rf:2', 'rf:3'));"
        "update od_dataset_images set split = 'valid';"
        "delete from od_images where source_ref in ('rf:10', 'rf:11');",
        database=scratch_db,
    )
    assert counts() == {DATASET: 2995, other: 3}


def test_split_and_class_name_rules(supabase_stack, scratch_db):
    apply(supabase_stack, scratch_db)
    supabase_stack.execute_sql(
        f"""
        insert into od_datasets (id, name) values ('{DATASET}', 'a'), ('22222222-2222-2222-2222-222222222222', 'b');
        insert into od_classes (name, dataset_id) values
          ('helmet', '{DATASET}'), ('helmet', '22222222-2222-2222-2222-222222222222'), ('product', '{DATASET}');
        insert into od_images (id, filename, image_url, width, height)
          values ('33333333-3333-3333-3333-333333333333', 'f', 'u', 1, 1);
        insert into od_dataset_images (dataset_id, image_id, split)
          values ('{DATASET}', '33333333-3333-3333-3333-333333333333', 'valid');
        """,
        database=scratch_db,
    )
    with pytest.raises(SqlError, match="od_classes_dataset_name_unique"):
        supabase_stack.execute_sql(
            f"insert into od_classes (name, dataset_id) values ('helmet', '{DATASET}');", database=scratch_db
        )
    with pytest.raises(SqlError, match="od_dataset_images_split_check"):
        supabase_stack.execute_sql("update od_dataset_images set split = 'training';", database=scratch_db)


def test_importer_upserts_hit_the_full_constraints_through_postgrest(supabase_client, clean_supabase):
    dataset = supabase_client.table("od_datasets").insert({"name": "roboflow"}).execute().data[0]["id"]
    helmet = {"name": "helmet", "dataset_id": dataset}
    images = [
        {
            "filename": f"{i}.jpg",
            "image_url": f"u{i}",
            "width": 10,
            "height": 10,
            "source": "import",
            "source_ref": f"roboflow:ws/p/1:{i}",
            "storage_path": f"{dataset}/train/{i}.jpg",
        }
        for i in range(5)
    ]

    for _run in range(2):
        supabase_client.table("od_classes").upsert(
            helmet, on_conflict="dataset_id,name", ignore_duplicates=True, returning="minimal"
        ).execute()
        class_id = supabase_client.table("od_classes").select("id").eq("dataset_id", dataset).execute().data[0]["id"]
        supabase_client.table("od_images").upsert(
            images, on_conflict="source_ref", ignore_duplicates=True, returning="minimal"
        ).execute()
        ids = (
            supabase_client.table("od_images")
            .select("id")
            .in_("source_ref", [i["source_ref"] for i in images])
            .execute()
            .data
        )
        links = [{"dataset_id": dataset, "image_id": r["id"], "split": "valid"} for r in ids]
        supabase_client.table("od_dataset_images").upsert(
            links, on_conflict="dataset_id,image_id", ignore_duplicates=True, returning="minimal"
        ).execute()
        boxes = [
            {
                "dataset_id": dataset,
                "image_id": r["id"],
                "class_id": class_id,
                "source_key": f"{n}#0",
                "bbox_x": 0.1,
                "bbox_y": 0.1,
                "bbox_width": 0.5,
                "bbox_height": 0.5,
            }
            for n, r in enumerate(ids)
        ]
        supabase_client.table("od_annotations").upsert(
            boxes, on_conflict="dataset_id,image_id,source_key", ignore_duplicates=True, returning="minimal"
        ).execute()

    totals = clean_supabase.sql(
        "select (select count(*) from od_images) as images, (select count(*) from od_dataset_images) as links, "
        "(select count(*) from od_annotations) as boxes, (select count(*) from od_classes where not is_system) "
        "as classes, (select image_count from od_datasets) as image_count"
    )
    assert totals == [{"images": 5, "links": 5, "boxes": 5, "classes": 1, "image_count": 5}]

    with pytest.raises(APIError) as storage_path_clash:
        supabase_client.table("od_images").insert({**images[0], "source_ref": "roboflow:other"}).execute()
    assert storage_path_clash.value.code == "23505"
    assert "od_images_storage_unique" in storage_path_clash.value.message
