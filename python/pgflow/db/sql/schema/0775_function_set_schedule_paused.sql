-- Pauses or resumes a schedule (our addition), whatever its origin: a paused schedule fires
-- nothing, and reconciliation of the code's schedules never changes paused_at, so a pause
-- outlives a redeploy. Resuming counts ticks from now(): those that fell during the pause are
-- not caught up. Pausing a paused schedule (or resuming a running one) changes nothing.
-- SQLSTATE P0002 when the flow has no such schedule.
create or replace function pgflow.set_schedule_paused(flow_slug text, schedule_name text,
                                                      paused boolean)
returns pgflow.schedules
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgflow.schedules;
begin
  if set_schedule_paused.paused is null then
    raise exception 'paused must be true or false, got NULL' using errcode = '22023';
  end if;
  select s.* into v_row from pgflow.schedules s
   where s.flow_slug = set_schedule_paused.flow_slug
     and s.schedule_name = set_schedule_paused.schedule_name
   for update;
  if not found then
    raise exception 'flow % has no schedule named %: `pgflow schedules list` shows them',
      coalesce(to_json(set_schedule_paused.flow_slug)::text, 'NULL'),
      coalesce(to_json(set_schedule_paused.schedule_name)::text, 'NULL')
      using errcode = 'P0002';
  end if;
  if set_schedule_paused.paused and v_row.paused_at is null then
    update pgflow.schedules s set paused_at = now(), updated_at = now()
     where s.schedule_id = v_row.schedule_id
    returning * into v_row;
  elsif not set_schedule_paused.paused and v_row.paused_at is not null then
    update pgflow.schedules s
       set paused_at = null, ticks_from = now(), next_tick_at = null, updated_at = now()
     where s.schedule_id = v_row.schedule_id
    returning * into v_row;
  end if;
  return v_row;
end;
$$;
