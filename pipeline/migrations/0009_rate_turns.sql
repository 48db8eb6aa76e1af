-- 0009: worker processes on one Roboflow key take turns (issue 12).
--  * od_import_rate_peers.turn: the process asked for a turn at its last beat (it sends all its rate
--    allows, so a turn of the key's time is worth its while; one that sends less takes none).
--  * od_import_rate_beat(key, peer, sent, accepted, refused, live_s, turn): 0008's beat, which also
--    records the ask and answers how many processes take turns on the key and, to one that asked,
--    its rank among them (from 0, in the order of their peer names). The processes all count the same
--    ones, so each takes a different turn of the wall clock's frames and sends only in it
--    (transforms/core/ratelimit.py): processes sending each on its own met by chance at the gateway,
--    whose bucket (two tokens at 20/s with a 0.1 s burst) refused some of them though together they
--    sent under its limit.
--  * od_import_schema_version() -> 9.
-- Optional, as 0008 (which it needs, and whose six-argument beat it keeps for older importers):
-- without it the processes share the key's rate without turns. Safe to apply more than once.

alter table public.od_import_rate_peers add column if not exists turn boolean not null default false;

create or replace function public.od_import_rate_beat(p_key text, p_peer text, p_sent real, p_accepted real,
                                                      p_refused real, p_live_s real, p_turn boolean)
returns jsonb
language plpgsql
as $$
declare
  answer jsonb;
begin
  insert into public.od_import_rate_peers as p (key_digest, peer, sent, accepted, refused, turn, seen_at)
  values (p_key, p_peer, greatest(p_sent, 0), greatest(p_accepted, 0), greatest(p_refused, 0), p_turn, now())
  on conflict (key_digest, peer) do update
    set sent = excluded.sent, accepted = excluded.accepted, refused = excluded.refused, turn = excluded.turn,
        seen_at = excluded.seen_at;
  delete from public.od_import_rate_peers where seen_at < now() - interval '1 hour';
  -- A process that sent nothing over its last beat (its part of the job is done, or it waits for
  -- work) is no peer: its part of the key is free, and so is its turn.
  select jsonb_build_object(
           'peers', count(*) filter (where sent > 0 or peer = p_peer),
           'accepted', coalesce(sum(accepted), 0),
           'refused', coalesce(sum(refused), 0),
           'turns', count(*) filter (where turn and sent > 0),
           'rank', case when p_turn and p_sent > 0
                        then count(*) filter (where turn and sent > 0 and peer < p_peer) end)
    into answer
    from public.od_import_rate_peers
   where key_digest = p_key and seen_at >= now() - make_interval(secs => p_live_s);
  return answer;
end;
$$;

grant execute on function public.od_import_rate_beat(text, text, real, real, real, real, boolean) to service_role;

create or replace function public.od_import_schema_version()
returns integer
language sql
stable
as $$ select 9 $$;

grant execute on function public.od_import_schema_version() to service_role, authenticated, anon;

notify pgrst, 'reload schema';
