-- 0002_idempotent_import.sql
-- Keys that make a re-run of the Roboflow import a no-op (reference §10.4): every write is an upsert
-- on a FULL unique constraint (PostgREST's on_conflict cannot use partial indexes: 42P10).
--   od_images:         storage_bucket, storage_path, file_hash, source_ref
--                      + od_images_source_ref_unique (source_ref)
--                      + od_images_storage_unique (storage_bucket, storage_path)
--   od_annotations:    source_key + od_annotations_source_unique (dataset_id, image_id, source_key)
--   od_dataset_images: a unique key on (dataset_id, image_id) when the live table lacks one;
--                      split check widened to 'train','val','valid','test'
--   od_classes:        class names unique per dataset (not globally)
-- NULLs never collide, so rows written before this migration stay valid. Every step checks the
-- catalog first, so the file is safe to apply more than once and on top of drifted schemas.
-- Adding a unique constraint fails if the live data already holds duplicates: clean them first.

create or replace function pg_temp.has_unique_key(target regclass, key_columns text[])
returns boolean
language sql
stable
as $$
  select exists (
    select 1
      from pg_constraint c
     where c.conrelid = target
       and c.contype in ('u', 'p')
       and (select array_agg(a.attname::text order by a.attname)
              from unnest(c.conkey) as k(attnum)
              join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum)
           = (select array_agg(col order by col) from unnest(key_columns) as col)
  );
$$;

alter table public.od_images
  add column if not exists storage_bucket text not null default 'od-images',
  add column if not exists storage_path text,
  add column if not exists file_hash text,
  add column if not exists source_ref text;

comment on column public.od_images.storage_bucket is 'Storage bucket holding the original image.';
comment on column public.od_images.storage_path is 'Object path in storage_bucket; content-addressed for imports.';
comment on column public.od_images.source_ref is
  'Idempotency key of an imported image: roboflow:<workspace>/<project>[/<version>]:<image id>.';

alter table public.od_annotations add column if not exists source_key text;

comment on column public.od_annotations.source_key is
  'Idempotency key of an imported annotation: <source_ref>#<box index>.';

do $$
begin
  if not pg_temp.has_unique_key('public.od_images', array['source_ref']) then
    alter table public.od_images add constraint od_images_source_ref_unique unique (source_ref);
  end if;

  if not pg_temp.has_unique_key('public.od_images', array['storage_bucket', 'storage_path']) then
    alter table public.od_images
      add constraint od_images_storage_unique unique (storage_bucket, storage_path);
  end if;

  if not pg_temp.has_unique_key('public.od_annotations', array['dataset_id', 'image_id', 'source_key']) then
    alter table public.od_annotations
      add constraint od_annotations_source_unique unique (dataset_id, image_id, source_key);
  end if;

  if not pg_temp.has_unique_key('public.od_dataset_images', array['dataset_id', 'image_id']) then
    alter table public.od_dataset_images
      add constraint od_dataset_images_dataset_image_unique unique (dataset_id, image_id);
  end if;

  if not pg_temp.has_unique_key('public.od_classes', array['dataset_id', 'name']) then
    alter table public.od_classes
      add constraint od_classes_dataset_name_unique unique (dataset_id, name);
  end if;
end
$$;

-- A leftover global UNIQUE (name) on od_classes would stop two datasets from both having "helmet".
do $$
declare
  constraint_name text;
begin
  for constraint_name in
    select c.conname
      from pg_constraint c
     where c.conrelid = 'public.od_classes'::regclass
       and c.contype = 'u'
       and c.conkey = array[(select attnum from pg_attribute
                              where attrelid = 'public.od_classes'::regclass and attname = 'name')]
  loop
    execute format('alter table public.od_classes drop constraint %I', constraint_name);
  end loop;
end
$$;

-- Roboflow names its validation split 'valid'; the platform says 'val'. Admit both. Whatever the
-- existing split check is called, it is replaced unless it already admits 'valid'.
do $$
declare
  constraint_name text;
begin
  if not exists (
    select 1
      from pg_constraint
     where conrelid = 'public.od_dataset_images'::regclass
       and conname = 'od_dataset_images_split_check'
       and pg_get_constraintdef(oid) like '%''valid''%'
  ) then
    for constraint_name in
      select conname
        from pg_constraint
       where conrelid = 'public.od_dataset_images'::regclass
         and contype = 'c'
         and pg_get_constraintdef(oid) like '%split%'
    loop
      execute format('alter table public.od_dataset_images drop constraint %I', constraint_name);
    end loop;
    alter table public.od_dataset_images
      add constraint od_dataset_images_split_check check (split in ('train', 'val', 'valid', 'test'));
  end if;
end
$$;
