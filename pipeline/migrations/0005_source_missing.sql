-- 0005: incremental sync can mark, instead of delete, images Roboflow no longer lists.
--  * od_dataset_images.source_missing_at: set by `--prune --prune_mode mark` when the image was not in a
--    complete listing of its Roboflow project; cleared when a later listing finds it again.
--  * od_import_schema_version() -> 5.
-- Safe to apply more than once.

alter table public.od_dataset_images add column if not exists source_missing_at timestamptz;

comment on column public.od_dataset_images.source_missing_at is
  'When the importer last found this image missing from its Roboflow project (null: present).';

create or replace function public.od_import_schema_version()
returns integer
language sql
stable
as $$ select 5 $$;

grant execute on function public.od_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
