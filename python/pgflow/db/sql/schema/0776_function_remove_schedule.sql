-- Deletes a schedule (our addition): one created at run time, or one the code no longer declares
-- (disabled by reconciliation). A schedule the code declares would come back at the next worker
-- start, so it is refused (22023): remove it from the code, or pause it. Its runs stay.
-- SQLSTATE P0002 when the flow has no such schedule.
create or replace function pgflow.remove_schedule(flow_slug text, schedule_name text)
returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgflow.schedules;
begin
  select s.* into v_row from pgflow.schedules s
   where s.flow_slug = remove_schedule.flow_slug and s.schedule_name = remove_schedule.schedule_name
   for update;
  if not found then
    raise exception 'flow % has no schedule named %: `pgflow schedules list` shows them',
      coalesce(to_json(remove_schedule.flow_slug)::text, 'NULL'),
      coalesce(to_json(remove_schedule.schedule_name)::text, 'NULL')
      using errcode = 'P0002';
  end if;
  if v_row.origin = 'code' and v_row.removed_from_code_at is null then
    raise exception 'schedule % of flow % is declared in the code: remove it from the Flow (the '
      'next worker that starts disables it) or pause it', to_json(v_row.schedule_name)::text,
      to_json(v_row.flow_slug)::text
      using errcode = '22023';
  end if;
  delete from pgflow.schedules s where s.schedule_id = v_row.schedule_id;
end;
$$;
