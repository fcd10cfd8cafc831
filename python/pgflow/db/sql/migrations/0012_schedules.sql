-- Schedules (our addition): pgflow.schedules, the functions that manage them at run time
-- (create_schedule, set_schedule_paused, remove_schedule: pgflow_client), reconcile the code's
-- (sync_code_schedules) and fire due ticks (claim_due_schedules, fire_schedule_ticks:
-- pgflow_worker), and the derived run id of a tick (_schedule_run_id). Nothing that exists
-- changes.

-- Schedules (our addition): a flow's runs started on a cron schedule by the workers that serve
-- it, one run per tick. Cron expressions are evaluated by the workers (Python, cronsim), which
-- store the next tick here; the database's clock (now()) says when it is due. A tick is fired in
-- the transaction that records it (last_tick_at) and creates its run, whose id is derived from
-- the schedule and the tick instant (pgflow._schedule_run_id), so a tick starts one run however
-- many workers look and whichever of them crash. last_tick_at stays when runs are pruned: no
-- tick at or before it is ever fired again.
--
-- origin: 'code' for schedules declared on a Flow, reconciled when a worker serving the flow
-- starts (pgflow.sync_code_schedules: created, updated, disabled when no longer declared:
-- removed_from_code_at); 'runtime' for those created by pgflow.create_schedule (the CLI, the
-- Client), which reconciliation never touches. paused_at is set and cleared by
-- pgflow.set_schedule_paused only, so a pause outlives a redeploy.
create table pgflow.schedules (
  schedule_id uuid primary key default gen_random_uuid(),
  flow_slug text not null references pgflow.flows (flow_slug) on delete cascade,
  schedule_name text not null,
  cron text not null,
  timezone text not null default 'UTC',
  input jsonb not null default 'null',
  catch_up int not null default 0,
  origin text not null,
  paused_at timestamptz,
  removed_from_code_at timestamptz,
  -- ticks at or before this instant are never fired: when the schedule was created, resumed,
  -- or given another cron or time zone
  ticks_from timestamptz not null default now(),
  -- the next tick to fire, computed by a worker; NULL until one has (after ticks_from)
  next_tick_at timestamptz,
  last_tick_at timestamptz,
  last_run_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint schedules_flow_slug_schedule_name_key unique (flow_slug, schedule_name),
  constraint schedule_name_is_valid check (pgflow.is_valid_slug(schedule_name)),
  constraint cron_has_five_or_six_fields
    check (cron ~ '^\s*\S+(\s+\S+){4,5}\s*$' and length(cron) <= 256),
  constraint timezone_is_named check (length(timezone) between 1 and 64),
  constraint catch_up_is_bounded check (catch_up between 0 and 1000),
  constraint origin_is_valid check (origin in ('code', 'runtime')),
  constraint removed_only_from_code check (removed_from_code_at is null or origin = 'code'),
  constraint next_tick_after_last_tick check (next_tick_at > last_tick_at)
);

-- the workers' look for due ticks
create index schedules_next_tick_at_idx on pgflow.schedules (next_tick_at)
  where paused_at is null and removed_from_code_at is null;

-- The id of the run a schedule's tick starts (our addition): the first 128 bits of
-- SHA-256(schedule id, '@', the tick instant in UTC to the microsecond) as an RFC 9562 version 8
-- UUID. The same tick always gets the same id, so a second start of it fails on runs_pkey even
-- if everything else were to go wrong. (uuid5 would need SHA-1, which PostgreSQL's core lacks.)
create or replace function pgflow._schedule_run_id(schedule_id uuid, tick_at timestamptz)
returns uuid
language plpgsql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hex text := encode(sha256(convert_to(
    _schedule_run_id.schedule_id::text || '@'
      || to_char(_schedule_run_id.tick_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'UTF8')), 'hex');
begin
  return (substr(v_hex, 1, 12) || '8' || substr(v_hex, 14, 3)
          || substr('89ab', (('x' || substr(v_hex, 17, 1))::bit(4)::int % 4) + 1, 1)
          || substr(v_hex, 18, 15))::uuid;
end;
$$;

-- What every way of writing a schedule checks first (our addition), with messages that say what
-- to give instead (SQLSTATE 22023). The cron expression itself is parsed by the workers
-- (cronsim); the table's constraint keeps its shape to five or six fields.
create or replace function pgflow._check_schedule(schedule_name text, cron text, timezone text,
                                                  catch_up int)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgflow.is_valid_slug(_check_schedule.schedule_name) then
    raise exception 'schedule name % is not valid: use 1 to 128 letters, digits and underscores, '
      'not starting with a digit', coalesce(to_json(_check_schedule.schedule_name)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.cron is null
     or _check_schedule.cron !~ '^\s*\S+(\s+\S+){4,5}\s*$' or length(_check_schedule.cron) > 256 then
    raise exception 'cron expression % must have 5 fields (minute hour day month weekday) or 6 '
      '(with seconds first)', coalesce(to_json(_check_schedule.cron)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.timezone is null or length(_check_schedule.timezone) not between 1 and 64
     or not exists (select 1 from pg_catalog.pg_timezone_names z
                     where z.name = _check_schedule.timezone) then
    raise exception 'time zone % is not known: give an IANA name such as "UTC" or "Europe/Paris"',
      coalesce(to_json(_check_schedule.timezone)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.catch_up is null or _check_schedule.catch_up not between 0 and 1000 then
    raise exception 'catch_up must be 0 (skip missed ticks) to 1000, got %',
      coalesce(_check_schedule.catch_up::text, 'NULL')
      using errcode = '22023';
  end if;
end;
$$;

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

revoke all on table pgflow.schedules from public;
revoke all on function pgflow._schedule_run_id(uuid, timestamptz) from public;
revoke all on function pgflow._check_schedule(text, text, text, int) from public;
revoke all on function pgflow.create_schedule(text, text, text, text, jsonb, int) from public;
revoke all on function pgflow.set_schedule_paused(text, text, boolean) from public;
revoke all on function pgflow.remove_schedule(text, text) from public;
revoke all on function pgflow.sync_code_schedules(text, jsonb) from public;
revoke all on function pgflow.claim_due_schedules(text[], int) from public;
revoke all on function pgflow.fire_schedule_ticks(uuid, timestamptz[], timestamptz) from public;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant select on pgflow.schedules to %I', v_role);
  end loop;
  if exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    grant execute on function pgflow.create_schedule(text, text, text, text, jsonb, int) to pgflow_client;
    grant execute on function pgflow.set_schedule_paused(text, text, boolean) to pgflow_client;
    grant execute on function pgflow.remove_schedule(text, text) to pgflow_client;
  end if;
  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.sync_code_schedules(text, jsonb) to pgflow_worker;
    grant execute on function pgflow.claim_due_schedules(text[], int) to pgflow_worker;
    grant execute on function pgflow.fire_schedule_ticks(uuid, timestamptz[], timestamptz) to pgflow_worker;
  end if;
end;
$$;
