-- 0007: resume and sync at the cost of what is left or what changed (issue 17).
--  * od_import_runs: one row per import run of a Roboflow source into a dataset, and whether it
--    finished. A run that did not finish is continued by the next run of the same source, target
--    and filters, which then makes no Roboflow details call for the images it already wrote.
--  * od_dataset_images.import_run_id: the run that last wrote the image (written with the import
--    hash, last): "written by the interrupted run" is one indexed lookup per batch of ids.
--  * od_dataset_images.listing_fingerprint: hash of the search listing's per-image summary (class
--    counts, split, tags, name, labels, user_metadata) for `--change_detection listing`.
--  * od_import_schema_version() -> 7.
--  * the same two columns on cls_dataset_images when the classification module is there (0006), so
--    classification imports resume and sync alike; apply 0007 again if 0006 comes later.
-- Applies after 0006 and on a schema without it. Safe to apply more than once.

create table if not exists public.od_import_runs (
  id uuid primary key default gen_random_uuid(),
  dataset_id uuid not null,  -- od_datasets.id or cls_datasets.id (no foreign key: either module's runs)
  source text not null,
  scope text not null default '',
  run_name text,
  change_detection text not null default 'exact',
  status text not null default 'running' check (status in ('running', 'finished')),
  attempts integer not null default 1,
  started_at timestamptz not null default now(),
  resumed_at timestamptz,
  finished_at timestamptz,
  summary jsonb
);

comment on table public.od_import_runs is
  'Roboflow import runs: source (roboflow/<workspace>/<project>), scope (filters), run_name (--run_id or the '
  'platform job id), whether it finished. An unfinished run is resumed by the next run of the same key.';

create index if not exists od_import_runs_key on public.od_import_runs (dataset_id, source, scope, status);
create index if not exists od_import_runs_name on public.od_import_runs (run_name);

alter table public.od_import_runs enable row level security;
grant all on table public.od_import_runs to service_role;

alter table public.od_dataset_images add column if not exists import_run_id uuid;
alter table public.od_dataset_images add column if not exists listing_fingerprint text;

alter table if exists public.cls_dataset_images add column if not exists import_run_id uuid;
alter table if exists public.cls_dataset_images add column if not exists listing_fingerprint text;

comment on column public.od_dataset_images.import_run_id is
  'od_import_runs.id of the run that last wrote this image (no foreign key: runs may be cleaned up).';
comment on column public.od_dataset_images.listing_fingerprint is
  'Hash of the Roboflow search listing''s summary of this image when it was imported (--change_detection listing).';

create or replace function public.od_import_schema_version()
returns integer
language sql
stable
as $$ select 7 $$;

grant execute on function public.od_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
