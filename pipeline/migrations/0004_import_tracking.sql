-- 0004: what the streaming importer needs beyond idempotency keys.
--  * od_dataset_images.import_hash: fingerprint of the imported source; written last for each image,
--    so an interrupted import is redone and an unchanged image is skipped on the next run.
--  * od_refresh_dataset_counters(dataset): recompute a dataset's counters once, after a bulk import.
--  * od_import_schema_version(): lets the importer check the schema before writing anything.
-- Safe to apply more than once.

alter table public.od_dataset_images add column if not exists import_hash text;

create or replace function public.od_refresh_dataset_counters(p_dataset_id uuid)
returns void
language sql
security definer
set search_path = public
as $$
  update public.od_datasets d set
    image_count = (select count(*) from public.od_dataset_images where dataset_id = p_dataset_id),
    annotated_image_count = (select count(*) from public.od_dataset_images
                             where dataset_id = p_dataset_id and annotation_count > 0),
    annotation_count = (select count(*) from public.od_annotations where dataset_id = p_dataset_id),
    class_count = (select count(distinct class_id) from public.od_annotations where dataset_id = p_dataset_id),
    updated_at = now()
  where d.id = p_dataset_id;
$$;

create or replace function public.od_import_schema_version()
returns integer
language sql
stable
as $$ select 4 $$;

grant execute on function public.od_refresh_dataset_counters(uuid) to service_role;
grant execute on function public.od_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
