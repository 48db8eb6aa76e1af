-- 0006: the platform's classification module (cls_*) as the target of Roboflow classification projects.
--  * The cls_* tables as the platform's migrations 040 and 054 describe them, created only when absent
--    (shapes from the platform reference; no code of theirs copied).
--  * What the importer needs on top, like 0002/0004/0005 did for od_*:
--      cls_images:         source_ref + storage_bucket, unique (source_ref) and (storage_bucket, storage_path)
--      cls_labels:         unique (dataset_id, image_id, class_id): one row per image and class, so a
--                          re-run upserts instead of duplicating (the platform has no key there)
--      cls_dataset_images: import_hash (written last per image), source_missing_at (--prune_mode mark)
--      cls_classes:        unique (dataset_id, name) when the live table lacks it
--  * cls_refresh_dataset_counters(dataset) and cls_import_schema_version().
-- Safe to apply more than once and on top of the platform's live cls_* tables.

-- The same helper as in 0002: each migration file runs on its own (e.g. pasted into the SQL editor).
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

create table if not exists public.cls_datasets (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  description text,
  task_type text not null default 'single_label' check (task_type in ('single_label', 'multi_label')),
  image_count integer default 0,
  labeled_image_count integer default 0,
  class_count integer default 0,
  split_ratios jsonb,
  preprocessing jsonb,
  version integer default 1,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

create table if not exists public.cls_classes (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  display_name text,
  description text,
  color text not null default '#3B82F6',
  parent_class_id uuid references public.cls_classes (id),
  image_count integer default 0,
  is_active boolean default true,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);
alter table public.cls_classes
  add column if not exists dataset_id uuid references public.cls_datasets (id) on delete cascade;

create table if not exists public.cls_images (
  id uuid primary key default gen_random_uuid(),
  filename text not null,
  original_filename text,
  image_url text not null,
  storage_path text,
  thumbnail_url text,
  width integer,
  height integer,
  file_size_bytes bigint,
  mime_type text default 'image/jpeg',
  source text not null default 'upload'
    check (source in ('upload', 'url_import', 'products_import', 'cutouts_import', 'od_import', 'dataset_import')),
  source_type text,
  source_id uuid,
  folder text,
  tags text[],
  status text not null default 'pending' check (status in ('pending', 'labeled', 'review', 'completed', 'skipped')),
  file_hash text,
  phash text,
  metadata jsonb,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

create table if not exists public.cls_dataset_images (
  id uuid primary key default gen_random_uuid(),
  dataset_id uuid not null references public.cls_datasets (id) on delete cascade,
  image_id uuid not null references public.cls_images (id) on delete cascade,
  status text not null default 'pending' check (status in ('pending', 'labeled', 'review', 'completed', 'skipped')),
  split text check (split in ('train', 'val', 'test', 'unassigned')),
  added_at timestamptz default now(),
  labeled_at timestamptz,
  unique (dataset_id, image_id)
);

create table if not exists public.cls_labels (
  id uuid primary key default gen_random_uuid(),
  dataset_id uuid not null references public.cls_datasets (id) on delete cascade,
  image_id uuid not null references public.cls_images (id) on delete cascade,
  class_id uuid not null references public.cls_classes (id) on delete restrict,
  confidence real check (confidence >= 0 and confidence <= 1),
  is_ai_generated boolean default false,
  ai_model text,
  is_reviewed boolean default false,
  reviewed_by uuid,
  reviewed_at timestamptz,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

alter table public.cls_images
  add column if not exists storage_bucket text not null default 'cls-images',
  add column if not exists source_ref text;
comment on column public.cls_images.source_ref is
  'Idempotency key of an imported image: roboflow:<image id>@<dataset id>.';

alter table public.cls_dataset_images
  add column if not exists import_hash text,
  add column if not exists source_missing_at timestamptz;

do $$
begin
  if not pg_temp.has_unique_key('public.cls_images', array['source_ref']) then
    alter table public.cls_images add constraint cls_images_source_ref_unique unique (source_ref);
  end if;
  if not pg_temp.has_unique_key('public.cls_images', array['storage_bucket', 'storage_path']) then
    alter table public.cls_images add constraint cls_images_storage_unique unique (storage_bucket, storage_path);
  end if;
  if not pg_temp.has_unique_key('public.cls_labels', array['dataset_id', 'image_id', 'class_id']) then
    alter table public.cls_labels
      add constraint cls_labels_image_class_unique unique (dataset_id, image_id, class_id);
  end if;
  if not pg_temp.has_unique_key('public.cls_classes', array['dataset_id', 'name']) then
    alter table public.cls_classes add constraint cls_classes_dataset_name_unique unique (dataset_id, name);
  end if;
  if not pg_temp.has_unique_key('public.cls_dataset_images', array['dataset_id', 'image_id']) then
    alter table public.cls_dataset_images
      add constraint cls_dataset_images_dataset_image_unique unique (dataset_id, image_id);
  end if;
end
$$;

create or replace function public.cls_refresh_dataset_counters(p_dataset_id uuid)
returns void
language sql
security definer
set search_path = public
as $$
  update public.cls_datasets d set
    image_count = (select count(*) from public.cls_dataset_images where dataset_id = p_dataset_id),
    labeled_image_count = (select count(*) from public.cls_dataset_images
                           where dataset_id = p_dataset_id and status = 'labeled'),
    class_count = (select count(*) from public.cls_classes where dataset_id = p_dataset_id),
    updated_at = now()
  where d.id = p_dataset_id;
$$;

create or replace function public.cls_import_schema_version()
returns integer
language sql
stable
as $$ select 6 $$;

grant all on table public.cls_datasets, public.cls_classes, public.cls_images, public.cls_dataset_images,
  public.cls_labels to anon, authenticated, service_role;
grant execute on function public.cls_refresh_dataset_counters(uuid) to service_role;
grant execute on function public.cls_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
