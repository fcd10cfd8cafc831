-- Creates a schedule at run time (our addition; `pgflow schedules add`, Client.add_schedule):
-- origin 'runtime', which reconciliation of the code's schedules never touches. Its first tick
-- is the first after now(). Refuses a name the flow already uses (SQLSTATE 23505) and an unknown
-- flow (22023).
create or replace function pgflow.create_schedule(flow_slug text, schedule_name text, cron text,
                                                  timezone text default 'UTC',
                                                  input jsonb default 'null',
                                                  catch_up int default 0)
returns pgflow.schedules
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgflow.schedules;
begin
  perform pgflow._check_schedule(create_schedule.schedule_name, create_schedule.cron,
                                 create_schedule.timezone, create_schedule.catch_up);
  if not exists (select 1 from pgflow.flows f where f.flow_slug = create_schedule.flow_slug) then
    raise exception 'flow % does not exist: start a worker for it (or compile it) first',
      coalesce(to_json(create_schedule.flow_slug)::text, 'NULL')
      using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(1885434473, hashtext(create_schedule.flow_slug));
  select s.* into v_row from pgflow.schedules s
   where s.flow_slug = create_schedule.flow_slug and s.schedule_name = create_schedule.schedule_name;
  if found then
    raise exception 'flow % already has a schedule named % (from %): remove it first or choose '
      'another name', to_json(create_schedule.flow_slug)::text,
      to_json(create_schedule.schedule_name)::text,
      case v_row.origin when 'code' then 'the code' else 'run time' end
      using errcode = '23505';
  end if;
  insert into pgflow.schedules (flow_slug, schedule_name, cron, timezone, input, catch_up, origin)
  values (create_schedule.flow_slug, create_schedule.schedule_name, btrim(create_schedule.cron),
          create_schedule.timezone, coalesce(create_schedule.input, 'null'),
          create_schedule.catch_up, 'runtime')
  returning * into v_row;
  return v_row;
end;
$$;
