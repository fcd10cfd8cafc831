-- The schedules of these flows that need a worker now (our addition): running (neither paused
-- nor disabled) and either due (next_tick_at <= now()) or without a computed next tick. Each row
-- comes locked (FOR UPDATE SKIP LOCKED) until the caller's transaction ends, so workers that
-- look at the same moment take different schedules; the caller fires them with
-- pgflow.fire_schedule_ticks in that same transaction. At most `qty` rows, the most overdue first.
create or replace function pgflow.claim_due_schedules(flow_slugs text[], qty int)
returns setof pgflow.schedules
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  select s.* from pgflow.schedules s
   where s.flow_slug = any (claim_due_schedules.flow_slugs)
     and s.paused_at is null and s.removed_from_code_at is null
     and (s.next_tick_at is null or s.next_tick_at <= now())
   order by s.next_tick_at nulls first, s.schedule_id
   limit greatest(claim_due_schedules.qty, 0)
   for update skip locked;
$$;
