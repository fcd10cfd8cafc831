create table pgflow.runs (
  run_id uuid primary key default gen_random_uuid(),
  flow_slug text not null references pgflow.flows (flow_slug),
  -- 'cancelled' is our addition (pgflow.cancel_run); the contract's statuses are the other three
  status text not null default 'started',
  input jsonb not null,
  output jsonb,
  remaining_steps int not null default 0,
  -- our addition: why the run failed or was cancelled, so clients need not search the steps
  error_message text,
  started_at timestamptz not null default now(),
  completed_at timestamptz,
  failed_at timestamptz,
  cancelled_at timestamptz,
  constraint status_is_valid check (status in ('started', 'completed', 'failed', 'cancelled')),
  constraint runs_remaining_steps_check check (remaining_steps >= 0),
  constraint completed_at_or_failed_at check (num_nonnulls(completed_at, failed_at, cancelled_at) <= 1),
  constraint completed_at_is_after_started_at check (completed_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at check (failed_at is null or failed_at >= started_at),
  constraint cancelled_at_is_after_started_at check (cancelled_at is null or cancelled_at >= started_at)
);
-- Newest runs first, whole or by flow, status or both (the dashboard's pages, `pgflow runs
-- list`): run_id breaks ties between runs started in one transaction, so a page can resume after
-- the last run it showed (keyset pagination) from an index, at any depth.
create index runs_started_at_idx on pgflow.runs (started_at desc, run_id desc);
create index runs_flow_slug_idx on pgflow.runs (flow_slug, started_at desc, run_id desc);
create index runs_status_idx on pgflow.runs (status, started_at desc, run_id desc);
create index runs_flow_status_idx on pgflow.runs (flow_slug, status, started_at desc, run_id desc);
create index runs_finished_at_idx on pgflow.runs ((coalesce(completed_at, failed_at, cancelled_at)))
  where status <> 'started';
