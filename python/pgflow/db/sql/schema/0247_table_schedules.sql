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
