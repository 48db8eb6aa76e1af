-- 0008: worker processes on one Roboflow key tell each other how fast they send (issue 12).
--  * od_import_rate_peers: one row per worker process sending on a Roboflow key, named by a digest
--    of the key (never the key): the API calls per second it sent, got answered and got refused (429)
--    over its last beat, and when it beat.
--  * od_import_rate_beat(key, peer, sent, accepted, refused, live_s): records one beat and answers how many
--    processes sent on the key within live_s seconds, and what it answered and refused them.
--    With --roboflow_rate_limit each process takes its part of the live processes' limit, not of the
--    most the job could start; without it a process under its fair part of what the key lets
--    through grows to it (a process that stopped sending frees its part at once).
--  * od_import_schema_version() -> 8.
-- Optional: without it every process divides the limit among as many processes as the job can start
-- and finds its part of an unknown limit alone. Applies after 0007. Safe to apply more than once.

create table if not exists public.od_import_rate_peers (
  key_digest text not null,
  peer text not null,
  sent real not null default 0,
  accepted real not null default 0,
  refused real not null default 0,
  seen_at timestamptz not null default now(),
  primary key (key_digest, peer)
);

comment on table public.od_import_rate_peers is
  'Importer worker processes sending on one Roboflow key (a digest of it): calls/s sent, answered and '
  'refused (429) over the last beat. Rows older than an hour are dropped by od_import_rate_beat().';

alter table public.od_import_rate_peers enable row level security;
grant all on table public.od_import_rate_peers to service_role;

create or replace function public.od_import_rate_beat(p_key text, p_peer text, p_sent real, p_accepted real,
                                                      p_refused real, p_live_s real)
returns jsonb
language plpgsql
as $$
declare
  answer jsonb;
begin
  insert into public.od_import_rate_peers as p (key_digest, peer, sent, accepted, refused, seen_at)
  values (p_key, p_peer, greatest(p_sent, 0), greatest(p_accepted, 0), greatest(p_refused, 0), now())
  on conflict (key_digest, peer) do update
    set sent = excluded.sent, accepted = excluded.accepted, refused = excluded.refused, seen_at = excluded.seen_at;
  delete from public.od_import_rate_peers where seen_at < now() - interval '1 hour';
  -- A process that sent nothing over its last beat (its part of the job is done, or it waits for
  -- work) is no peer: its part of the key is free.
  select jsonb_build_object('peers', count(*) filter (where sent > 0 or peer = p_peer),
                            'accepted', coalesce(sum(accepted), 0),
                            'refused', coalesce(sum(refused), 0))
    into answer
    from public.od_import_rate_peers
   where key_digest = p_key and seen_at >= now() - make_interval(secs => p_live_s);
  return answer;
end;
$$;

grant execute on function public.od_import_rate_beat(text, text, real, real, real, real) to service_role;

create or replace function public.od_import_schema_version()
returns integer
language sql
stable
as $$ select 8 $$;

grant execute on function public.od_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
