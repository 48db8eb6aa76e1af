-- 0003_bulk_counters.sql
-- The platform keeps od_datasets.image_count with a per-row trigger that re-counts the whole dataset
-- (COUNT(*)) for every od_dataset_images row: a bulk import of n images costs O(n^2). This replaces it
-- with statement-level triggers over transition tables that add/subtract the per-dataset row counts
-- of each statement (O(rows written)), then recomputes every count once so it starts out correct.
-- Rows skipped by ON CONFLICT DO NOTHING are not in the transition table, so re-runs count nothing.
-- Safe to apply more than once.

-- Drop the per-row counter trigger whatever it is called: any row-level trigger on od_dataset_images
-- whose function maintains image_count.
do $$
declare
  trigger_name text;
begin
  for trigger_name in
    select t.tgname
      from pg_trigger t
      join pg_proc p on p.oid = t.tgfoid
     where t.tgrelid = 'public.od_dataset_images'::regclass
       and not t.tgisinternal
       and (t.tgtype & 1) = 1
       and p.prosrc ilike '%image_count%'
  loop
    execute format('drop trigger %I on public.od_dataset_images', trigger_name);
  end loop;
end
$$;

create or replace function public.od_dataset_images_count_inserted()
returns trigger
language plpgsql
as $$
begin
  update public.od_datasets d
     set image_count = coalesce(d.image_count, 0) + added.n
    from (select dataset_id, count(*) as n from inserted_rows group by dataset_id) as added
   where d.id = added.dataset_id;
  return null;
end;
$$;

create or replace function public.od_dataset_images_count_deleted()
returns trigger
language plpgsql
as $$
begin
  update public.od_datasets d
     set image_count = greatest(coalesce(d.image_count, 0) - removed.n, 0)
    from (select dataset_id, count(*) as n from deleted_rows group by dataset_id) as removed
   where d.id = removed.dataset_id;
  return null;
end;
$$;

create or replace function public.od_dataset_images_count_moved()
returns trigger
language plpgsql
as $$
begin
  update public.od_datasets d
     set image_count = greatest(coalesce(d.image_count, 0) + delta.n, 0)
    from (
      select dataset_id, sum(n) as n
        from (
          select o.dataset_id, -count(*) as n
            from old_rows o join new_rows r on r.id = o.id
           where r.dataset_id is distinct from o.dataset_id
           group by o.dataset_id
          union all
          select r.dataset_id, count(*) as n
            from old_rows o join new_rows r on r.id = o.id
           where r.dataset_id is distinct from o.dataset_id
           group by r.dataset_id
        ) as moves
       group by dataset_id
    ) as delta
   where d.id = delta.dataset_id and delta.n <> 0;
  return null;
end;
$$;

drop trigger if exists od_dataset_images_count_insert on public.od_dataset_images;
create trigger od_dataset_images_count_insert
  after insert on public.od_dataset_images
  referencing new table as inserted_rows
  for each statement execute function public.od_dataset_images_count_inserted();

drop trigger if exists od_dataset_images_count_delete on public.od_dataset_images;
create trigger od_dataset_images_count_delete
  after delete on public.od_dataset_images
  referencing old table as deleted_rows
  for each statement execute function public.od_dataset_images_count_deleted();

drop trigger if exists od_dataset_images_count_update on public.od_dataset_images;
create trigger od_dataset_images_count_update
  after update on public.od_dataset_images
  referencing old table as old_rows new table as new_rows
  for each statement execute function public.od_dataset_images_count_moved();

update public.od_datasets d
   set image_count = counted.n
  from (
    select ds.id, count(di.id) as n
      from public.od_datasets ds
      left join public.od_dataset_images di on di.dataset_id = ds.id
     group by ds.id
  ) as counted
 where d.id = counted.id
   and d.image_count is distinct from counted.n;
