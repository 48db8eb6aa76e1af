-- 0001_platform_schema.sql
-- The platform's object-detection schema (reference §10.1) for a database that does not have it yet:
-- each table (with its indexes, RLS switch, triggers and Supabase-style grants) and each function is
-- created only when absent, so on the live database, which already has them, this file changes
-- nothing. It includes the platform's per-row od_datasets.image_count trigger (0003 replaces it) so a
-- fresh database behaves like the live one. Safe to apply more than once.

do $$
begin
  if not exists (select 1 from pg_extension where extname = 'uuid-ossp') then
    if exists (select 1 from pg_namespace where nspname = 'extensions') then
      create extension "uuid-ossp" with schema extensions;
    else
      create extension "uuid-ossp";
    end if;
  end if;
end
$$;

do $$
begin
  if to_regprocedure('public.update_updated_at_column()') is null then
    create function public.update_updated_at_column()
    returns trigger
    language plpgsql
    as $fn$
    begin
      new.updated_at = now();
      return new;
    end;
    $fn$;
  end if;

  if to_regprocedure('public.update_dataset_image_count()') is null then
    create function public.update_dataset_image_count()
    returns trigger
    language plpgsql
    as $fn$
    begin
      if tg_op = 'INSERT' then
        update public.od_datasets
           set image_count = (select count(*) from public.od_dataset_images where dataset_id = new.dataset_id)
         where id = new.dataset_id;
      elsif tg_op = 'DELETE' then
        update public.od_datasets
           set image_count = (select count(*) from public.od_dataset_images where dataset_id = old.dataset_id)
         where id = old.dataset_id;
      end if;
      return null;
    end;
    $fn$;
  end if;
end
$$;

do $$
begin
  if to_regclass('public.od_datasets') is null then
    create table public.od_datasets (
      id uuid primary key default uuid_generate_v4(),
      name text not null,
      description text,
      annotation_type text default 'bbox' check (annotation_type in ('bbox', 'polygon', 'segmentation')),
      image_count integer default 0,
      annotated_image_count integer default 0,
      annotation_count integer default 0,
      class_count integer default 0,
      version integer default 1,
      created_at timestamptz default now(),
      updated_at timestamptz default now()
    );
    alter table public.od_datasets enable row level security;
    create trigger update_od_datasets_updated_at before update on public.od_datasets
      for each row execute function public.update_updated_at_column();
    grant all on table public.od_datasets to anon, authenticated, service_role;
  end if;

  if to_regclass('public.od_classes') is null then
    create table public.od_classes (
      id uuid primary key default uuid_generate_v4(),
      name text not null,
      display_name text,
      description text,
      color text not null default '#3B82F6',
      category text,
      parent_class_id uuid references public.od_classes (id) on delete set null,
      aliases text[],
      annotation_count integer default 0,
      is_active boolean default true,
      is_system boolean default false,
      created_at timestamptz default now(),
      updated_at timestamptz default now(),
      dataset_id uuid references public.od_datasets (id) on delete cascade,
      constraint od_classes_dataset_name_unique unique (dataset_id, name)
    );
    alter table public.od_classes enable row level security;
    create trigger update_od_classes_updated_at before update on public.od_classes
      for each row execute function public.update_updated_at_column();
    insert into public.od_classes (name, display_name, color, category, is_system)
    values
      ('product', 'Product', '#3B82F6', 'retail', true),
      ('price_tag', 'Price Tag', '#10B981', 'retail', true),
      ('shelf', 'Shelf', '#F59E0B', 'fixture', true),
      ('empty_slot', 'Empty Slot', '#EF4444', 'retail', true),
      ('promo_sign', 'Promotional Sign', '#8B5CF6', 'marketing', true),
      ('barcode', 'Barcode', '#6B7280', 'retail', true),
      ('person', 'Person', '#EC4899', 'other', true);
    create index idx_od_classes_dataset on public.od_classes (dataset_id);
    grant all on table public.od_classes to anon, authenticated, service_role;
  end if;

  if to_regclass('public.od_images') is null then
    create table public.od_images (
      id uuid primary key default uuid_generate_v4(),
      filename text not null,
      original_filename text,
      image_url text not null,
      thumbnail_url text,
      width integer not null,
      height integer not null,
      file_size_bytes bigint,
      mime_type text default 'image/jpeg',
      source text not null default 'upload' check (source in ('upload', 'buybuddy_sync', 'import')),
      buybuddy_image_id text,
      buybuddy_evaluation_id text,
      folder text,
      tags text[],
      status text not null default 'pending'
        check (status in ('pending', 'annotating', 'annotated', 'completed', 'skipped')),
      metadata jsonb default '{}',
      created_at timestamptz default now(),
      updated_at timestamptz default now()
    );
    alter table public.od_images enable row level security;
    create trigger update_od_images_updated_at before update on public.od_images
      for each row execute function public.update_updated_at_column();
    create index idx_od_images_status on public.od_images (status);
    create index idx_od_images_source on public.od_images (source);
    create index idx_od_images_folder on public.od_images (folder);
    create index idx_od_images_created_at on public.od_images (created_at desc);
    create index idx_od_images_buybuddy_image_id on public.od_images (buybuddy_image_id)
      where buybuddy_image_id is not null;
    grant all on table public.od_images to anon, authenticated, service_role;
  end if;

  if to_regclass('public.od_dataset_images') is null then
    create table public.od_dataset_images (
      id uuid primary key default uuid_generate_v4(),
      dataset_id uuid not null references public.od_datasets (id) on delete cascade,
      image_id uuid not null references public.od_images (id) on delete cascade,
      status text not null default 'pending'
        check (status in ('pending', 'annotating', 'annotated', 'completed', 'skipped')),
      annotation_count integer default 0,
      assigned_to text,
      split text check (split in ('train', 'val', 'test')),
      added_at timestamptz default now(),
      completed_at timestamptz,
      unique (dataset_id, image_id)
    );
    alter table public.od_dataset_images enable row level security;
    create trigger update_dataset_image_count after insert or delete on public.od_dataset_images
      for each row execute function public.update_dataset_image_count();
    create index idx_od_dataset_images_dataset on public.od_dataset_images (dataset_id);
    create index idx_od_dataset_images_image on public.od_dataset_images (image_id);
    grant all on table public.od_dataset_images to anon, authenticated, service_role;
  end if;

  if to_regclass('public.od_annotations') is null then
    create table public.od_annotations (
      id uuid primary key default uuid_generate_v4(),
      dataset_id uuid not null references public.od_datasets (id) on delete cascade,
      image_id uuid not null references public.od_images (id) on delete cascade,
      class_id uuid not null references public.od_classes (id) on delete restrict,
      bbox_x real not null check (bbox_x >= 0 and bbox_x <= 1),
      bbox_y real not null check (bbox_y >= 0 and bbox_y <= 1),
      bbox_width real not null check (bbox_width > 0 and bbox_width <= 1),
      bbox_height real not null check (bbox_height > 0 and bbox_height <= 1),
      polygon jsonb,
      mask_url text,
      mask_rle text,
      is_ai_generated boolean default false,
      confidence real check (confidence >= 0 and confidence <= 1),
      ai_model text,
      is_reviewed boolean default false,
      reviewed_by text,
      reviewed_at timestamptz,
      attributes jsonb default '{}',
      created_at timestamptz default now(),
      updated_at timestamptz default now(),
      created_by text
    );
    alter table public.od_annotations enable row level security;
    create trigger update_od_annotations_updated_at before update on public.od_annotations
      for each row execute function public.update_updated_at_column();
    create index idx_od_annotations_dataset on public.od_annotations (dataset_id);
    create index idx_od_annotations_image on public.od_annotations (image_id);
    create index idx_od_annotations_class on public.od_annotations (class_id);
    create index idx_od_annotations_dataset_image on public.od_annotations (dataset_id, image_id);
    create index idx_od_annotations_ai_generated on public.od_annotations (is_ai_generated)
      where is_ai_generated = true;
    grant all on table public.od_annotations to anon, authenticated, service_role;
  end if;
end
$$;
