-- pgflow schema: definition tables, runtime tables, the task record type and the indexes that
-- keep every hot query on an index. Functions come in later migrations.

create schema if not exists pgflow;

create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select slug is not null
     and length(slug) between 1 and 128
     and slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$'
     and slug <> 'run';
$$;

------------------------------------------------------------------------------------------------
-- Definitions
------------------------------------------------------------------------------------------------
create table pgflow.flows (
  flow_slug text primary key,
  opt_max_attempts int not null default 3,
  opt_base_delay int not null default 1,
  opt_timeout int not null default 60,
  created_at timestamptz not null default now(),
  constraint flows_slug_is_valid check (pgflow.is_valid_slug(flow_slug)),
  -- a flow slug is also a pgmq queue name: pgmq limits those to 47 characters
  constraint flows_slug_fits_queue_name check (length(flow_slug) <= 47),
  constraint flows_opt_max_attempts_nonnegative check (opt_max_attempts >= 0),
  constraint flows_opt_base_delay_nonnegative check (opt_base_delay >= 0),
  constraint flows_opt_timeout_positive check (opt_timeout > 0)
);
-- pgmq lowercases queue names, so two flows that differ only by case would share a queue
create unique index flows_slug_lower_key on pgflow.flows (lower(flow_slug));

create table pgflow.steps (
  flow_slug text not null references pgflow.flows (flow_slug),
  step_slug text not null,
  step_type text not null default 'single',
  step_index int not null default 0,
  deps_count int not null default 0,
  opt_max_attempts int,
  opt_base_delay int,
  opt_timeout int,
  opt_start_delay int,
  required_input_pattern jsonb,
  forbidden_input_pattern jsonb,
  when_unmet text not null default 'skip',
  when_exhausted text not null default 'fail',
  created_at timestamptz not null default now(),
  primary key (flow_slug, step_slug),
  constraint steps_step_index_key unique (flow_slug, step_index),
  constraint steps_slug_is_valid check (pgflow.is_valid_slug(step_slug)),
  constraint steps_step_type_is_valid check (step_type in ('single', 'map')),
  constraint steps_deps_count_nonnegative check (deps_count >= 0),
  constraint steps_map_has_at_most_one_dep check (step_type <> 'map' or deps_count <= 1),
  constraint steps_opt_max_attempts_nonnegative check (opt_max_attempts is null or opt_max_attempts >= 0),
  constraint steps_opt_base_delay_nonnegative check (opt_base_delay is null or opt_base_delay >= 0),
  constraint steps_opt_timeout_positive check (opt_timeout is null or opt_timeout > 0),
  constraint steps_opt_start_delay_nonnegative check (opt_start_delay is null or opt_start_delay >= 0),
  constraint steps_required_pattern_is_object
    check (required_input_pattern is null or jsonb_typeof(required_input_pattern) = 'object'),
  constraint steps_forbidden_pattern_is_object
    check (forbidden_input_pattern is null or jsonb_typeof(forbidden_input_pattern) = 'object'),
  constraint steps_when_unmet_is_valid check (when_unmet in ('fail', 'skip', 'skip-cascade')),
  constraint steps_when_exhausted_is_valid check (when_exhausted in ('fail', 'skip', 'skip-cascade'))
);

create table pgflow.deps (
  flow_slug text not null references pgflow.flows (flow_slug),
  dep_slug text not null,
  step_slug text not null,
  created_at timestamptz not null default now(),
  primary key (flow_slug, dep_slug, step_slug),
  foreign key (flow_slug, dep_slug) references pgflow.steps (flow_slug, step_slug),
  foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug),
  constraint deps_no_self_dependency check (dep_slug <> step_slug)
);
-- parents of a step (the primary key serves children of a step)
create index deps_step_idx on pgflow.deps (flow_slug, step_slug);

------------------------------------------------------------------------------------------------
-- Workers
------------------------------------------------------------------------------------------------
create table pgflow.workers (
  worker_id uuid primary key,
  queue_name text not null,
  function_name text not null,
  started_at timestamptz not null default now(),
  deprecated_at timestamptz,
  stopped_at timestamptz,
  last_heartbeat_at timestamptz not null default now()
);
create index workers_queue_idx on pgflow.workers (queue_name, last_heartbeat_at);

------------------------------------------------------------------------------------------------
-- Runtime
------------------------------------------------------------------------------------------------
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
  constraint runs_status_is_valid check (status in ('started', 'completed', 'failed', 'cancelled')),
  constraint runs_remaining_steps_nonnegative check (remaining_steps >= 0),
  constraint runs_single_terminal_timestamp check (num_nonnulls(completed_at, failed_at, cancelled_at) <= 1),
  constraint runs_completed_after_start check (completed_at is null or completed_at >= started_at),
  constraint runs_failed_after_start check (failed_at is null or failed_at >= started_at),
  constraint runs_cancelled_after_start check (cancelled_at is null or cancelled_at >= started_at)
);
create index runs_flow_slug_idx on pgflow.runs (flow_slug, started_at desc);
create index runs_status_idx on pgflow.runs (status, started_at desc);
create index runs_finished_at_idx on pgflow.runs ((coalesce(completed_at, failed_at, cancelled_at)))
  where status <> 'started';

create table pgflow.step_states (
  flow_slug text not null references pgflow.flows (flow_slug),
  run_id uuid not null references pgflow.runs (run_id),
  step_slug text not null,
  status text not null default 'created',
  remaining_tasks int,
  initial_tasks int,
  remaining_deps int not null default 0,
  output jsonb,
  error_message text,
  skip_reason text,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  skipped_at timestamptz,
  primary key (run_id, step_slug),
  foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug),
  constraint step_states_status_is_valid
    check (status in ('created', 'started', 'completed', 'failed', 'skipped')),
  constraint step_states_remaining_tasks_nonnegative check (remaining_tasks is null or remaining_tasks >= 0),
  constraint step_states_initial_tasks_nonnegative check (initial_tasks is null or initial_tasks >= 0),
  constraint step_states_remaining_deps_nonnegative check (remaining_deps >= 0),
  constraint step_states_remaining_tasks_null_until_started
    check (status not in ('created', 'skipped') or remaining_tasks is null),
  constraint step_states_initial_tasks_known_when_started
    check (status <> 'started' or initial_tasks is not null),
  constraint step_states_completed_has_no_remaining_tasks
    check (status <> 'completed' or remaining_tasks = 0),
  constraint step_states_output_only_when_completed check (output is null or status = 'completed'),
  constraint step_states_skip_reason_iff_skipped check ((status = 'skipped') = (skip_reason is not null)),
  constraint step_states_skip_reason_is_valid
    check (skip_reason is null or skip_reason in ('condition_unmet', 'handler_failed', 'dependency_skipped')),
  constraint step_states_single_terminal_timestamp
    check (num_nonnulls(completed_at, failed_at, skipped_at) <= 1),
  constraint step_states_started_after_created check (started_at is null or started_at >= created_at),
  constraint step_states_completed_after_start
    check (completed_at is null or completed_at >= coalesce(started_at, created_at)),
  constraint step_states_failed_after_start
    check (failed_at is null or failed_at >= coalesce(started_at, created_at)),
  constraint step_states_skipped_after_created check (skipped_at is null or skipped_at >= created_at)
);
-- ready steps of a run: created, no remaining dependencies
create index step_states_ready_idx on pgflow.step_states (run_id, remaining_deps) where status = 'created';

-- The foreign key to step_states also ties a task to its run and flow; separate keys to runs
-- and flows would only add two lookups to every task inserted (a third of the insert's cost).
create table pgflow.step_tasks (
  flow_slug text not null,
  run_id uuid not null,
  step_slug text not null,
  message_id bigint,
  task_index int not null default 0,
  status text not null default 'queued',
  attempts_count int not null default 0,
  error_message text,
  output jsonb,
  queued_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  last_worker_id uuid references pgflow.workers (worker_id) on delete set null,
  requeued_count int not null default 0,
  last_requeued_at timestamptz,
  permanently_stalled_at timestamptz,
  primary key (run_id, step_slug, task_index),
  foreign key (run_id, step_slug) references pgflow.step_states (run_id, step_slug),
  constraint step_tasks_status_is_valid
    check (status in ('queued', 'started', 'completed', 'failed', 'cancelled', 'skipped')),
  constraint step_tasks_task_index_nonnegative check (task_index >= 0),
  constraint step_tasks_attempts_nonnegative check (attempts_count >= 0),
  constraint step_tasks_requeued_nonnegative check (requeued_count >= 0),
  constraint step_tasks_output_only_when_finished check (output is null or status in ('completed', 'failed'))
);
-- tasks by message id (message ids are per queue, and a queue is per flow)
create index step_tasks_message_idx on pgflow.step_tasks (flow_slug, message_id);
-- started tasks by worker
create index step_tasks_worker_idx on pgflow.step_tasks (last_worker_id) where status = 'started';
-- started tasks by age, for stalled-task recovery
create index step_tasks_started_at_idx on pgflow.step_tasks (started_at) where status = 'started';

create type pgflow.step_task_record as (
  flow_slug text,
  run_id uuid,
  step_slug text,
  input jsonb,
  msg_id bigint,
  task_index int,
  flow_input jsonb
);
