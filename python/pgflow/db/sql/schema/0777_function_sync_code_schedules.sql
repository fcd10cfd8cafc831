-- Reconciles the schedules a flow's code declares (our addition), called by each worker that
-- serves the flow when it starts. `schedules` is a JSON array of objects {"name", "cron",
-- "timezone", "input", "catch_up"}. Each is created (origin 'code') or updated to match; a new
-- cron or time zone counts ticks from now(). A code schedule the array no longer names is
-- disabled (removed_from_code_at), not deleted: its history stays, and it comes back if the
-- code declares it again (counting ticks from then). paused_at is never changed here, so a
-- pause set at run time outlives a redeploy; schedules created at run time are never touched: a
-- code schedule named like one is reported in "conflicts" and left out. Returns the names per
-- outcome: {"created", "updated", "unchanged", "disabled", "conflicts"}. One reconciliation per
-- flow at a time (advisory lock): the last worker to start wins.
create or replace function pgflow.sync_code_schedules(flow_slug text, schedules jsonb)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := sync_code_schedules.flow_slug;
  v_item jsonb;
  v_name text;
  v_cron text;
  v_tz text;
  v_input jsonb;
  v_catch_up int;
  v_row pgflow.schedules;
  v_names text[] := '{}';
  v_created text[] := '{}';
  v_updated text[] := '{}';
  v_unchanged text[] := '{}';
  v_disabled text[] := '{}';
  v_conflicts text[] := '{}';
begin
  if sync_code_schedules.schedules is null or jsonb_typeof(sync_code_schedules.schedules) <> 'array' then
    raise exception 'schedules must be a JSON array of {"name", "cron", "timezone", "input", '
      '"catch_up"} objects, got %', coalesce(jsonb_typeof(sync_code_schedules.schedules), 'NULL')
      using errcode = '22023';
  end if;
  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    raise exception 'flow % does not exist: compile it first',
      coalesce(to_json(v_slug)::text, 'NULL') using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(1885434473, hashtext(v_slug));

  for v_item in select e from jsonb_array_elements(sync_code_schedules.schedules) e loop
    if jsonb_typeof(v_item) <> 'object' then
      raise exception 'each schedule must be a JSON object, got a JSON %', jsonb_typeof(v_item)
        using errcode = '22023';
    end if;
    v_name := v_item ->> 'name';
    v_cron := btrim(v_item ->> 'cron');
    v_tz := coalesce(v_item ->> 'timezone', 'UTC');
    v_input := coalesce(v_item -> 'input', 'null');
    v_catch_up := coalesce((v_item ->> 'catch_up')::int, 0);
    perform pgflow._check_schedule(v_name, v_cron, v_tz, v_catch_up);
    if v_name = any (v_names) then
      raise exception 'schedule % is declared twice', to_json(v_name)::text using errcode = '22023';
    end if;
    v_names := v_names || v_name;

    select s.* into v_row from pgflow.schedules s
     where s.flow_slug = v_slug and s.schedule_name = v_name for update;
    if not found then
      insert into pgflow.schedules (flow_slug, schedule_name, cron, timezone, input, catch_up, origin)
      values (v_slug, v_name, v_cron, v_tz, v_input, v_catch_up, 'code');
      v_created := v_created || v_name;
    elsif v_row.origin <> 'code' then
      v_conflicts := v_conflicts || v_name;
    elsif v_row.cron = v_cron and v_row.timezone = v_tz and v_row.input = v_input
          and v_row.catch_up = v_catch_up and v_row.removed_from_code_at is null then
      v_unchanged := v_unchanged || v_name;
    else
      update pgflow.schedules s
         set cron = v_cron, timezone = v_tz, input = v_input, catch_up = v_catch_up,
             removed_from_code_at = null, updated_at = now(),
             -- a new cadence (or a schedule declared again) counts its ticks from now
             ticks_from = case when s.cron = v_cron and s.timezone = v_tz
                                    and s.removed_from_code_at is null
                               then s.ticks_from else now() end,
             next_tick_at = case when s.cron = v_cron and s.timezone = v_tz
                                      and s.removed_from_code_at is null
                                 then s.next_tick_at end
       where s.schedule_id = v_row.schedule_id;
      v_updated := v_updated || v_name;
    end if;
  end loop;

  with gone as (
    update pgflow.schedules s set removed_from_code_at = now(), next_tick_at = null, updated_at = now()
     where s.flow_slug = v_slug and s.origin = 'code' and s.removed_from_code_at is null
       and s.schedule_name <> all (v_names)
    returning s.schedule_name
  )
  select coalesce(array_agg(g.schedule_name order by g.schedule_name), '{}') into v_disabled from gone g;

  return jsonb_build_object('created', to_jsonb(v_created), 'updated', to_jsonb(v_updated),
                            'unchanged', to_jsonb(v_unchanged), 'disabled', to_jsonb(v_disabled),
                            'conflicts', to_jsonb(v_conflicts));
end;
$$;
