-- Fires ticks of one schedule (our addition): for each instant of `ticks` (ascending, each after
-- the schedule's last tick and its ticks_from, none after now()), starts a run of the schedule's
-- flow with its input and the run id pgflow._schedule_run_id gives, with the run headers
-- "pgflow-schedule" (the schedule's name) and "pgflow-scheduled-at" (the tick, ISO 8601 UTC);
-- then records the last tick and stores `next_tick_at` (after now(), or NULL to have it computed
-- again). All in the caller's transaction: a crash before the commit leaves nothing, after it
-- leaves the runs and the recorded tick together. The row is locked first, so a concurrent call
-- waits and then finds its ticks already fired, which raises (SQLSTATE 22023, nothing done).
-- Returns (tick_at, run_id) per run started.
create or replace function pgflow.fire_schedule_ticks(schedule_id uuid, ticks timestamptz[],
                                                      next_tick_at timestamptz)
returns table (tick_at timestamptz, run_id uuid)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgflow.schedules;
  v_tick timestamptz;
  v_after timestamptz;
  v_run uuid;
begin
  select s.* into v_row from pgflow.schedules s
   where s.schedule_id = fire_schedule_ticks.schedule_id for update;
  if not found then
    raise exception 'schedule % does not exist', fire_schedule_ticks.schedule_id using errcode = 'P0002';
  end if;
  if cardinality(fire_schedule_ticks.ticks) > 0
     and (v_row.paused_at is not null or v_row.removed_from_code_at is not null) then
    raise exception 'schedule % of flow % is paused or disabled: it fires nothing',
      to_json(v_row.schedule_name)::text, to_json(v_row.flow_slug)::text using errcode = '22023';
  end if;
  if fire_schedule_ticks.next_tick_at is not null and fire_schedule_ticks.next_tick_at <= now() then
    raise exception 'next_tick_at % is not after now() (%)', fire_schedule_ticks.next_tick_at, now()
      using errcode = '22023';
  end if;

  v_after := greatest(v_row.ticks_from, v_row.last_tick_at);
  foreach v_tick in array coalesce(fire_schedule_ticks.ticks, '{}') loop
    if v_tick is null or v_tick <= v_after or v_tick > now() then
      raise exception 'tick % of schedule % of flow % cannot fire: ticks must be ascending, after % '
        '(its last tick or when it began counting) and not after now() (%)',
        coalesce(v_tick::text, 'NULL'), to_json(v_row.schedule_name)::text,
        to_json(v_row.flow_slug)::text, v_after, now()
        using errcode = '22023';
    end if;
    v_run := pgflow._schedule_run_id(v_row.schedule_id, v_tick);
    perform pgflow.start_flow_with_headers(
      v_row.flow_slug, v_row.input,
      jsonb_build_object('pgflow-schedule', v_row.schedule_name,
                         'pgflow-scheduled-at',
                         to_char(v_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
      v_run);
    v_after := v_tick;
    tick_at := v_tick;
    run_id := v_run;
    return next;
  end loop;

  update pgflow.schedules s
     set last_tick_at = case when v_run is null then s.last_tick_at else v_after end,
         last_run_id = coalesce(v_run, s.last_run_id),
         next_tick_at = fire_schedule_ticks.next_tick_at
   where s.schedule_id = v_row.schedule_id;
end;
$$;
