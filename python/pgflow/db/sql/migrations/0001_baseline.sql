-- The schema of pgflow. One file per object in this folder, applied in file-number order; every
-- table's file holds the indexes that keep its hot queries on an index.
--
-- Lock order, everywhere: the run row first (for update), then step states, then tasks. Every
-- function that changes a run's counters takes the run lock, so per-run bookkeeping is serial
-- and deadlock-free.
--
-- `if not exists`: `pgflow db migrate` creates the schema before the first migration, to hold
-- its table pgflow.migrations.

create schema if not exists pgflow;
-- Before the tables: their check constraints call it.
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
-- Scratch rows of claim_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._claim_item as (
  msg_id bigint, run_id uuid, step_slug text, task_index int, attempt int, step_type text,
  deps_count int, payload text
);
-- Scratch rows of report_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._report_item as (
  ord int, run_id uuid, step_slug text, task_index int, output jsonb, error_message text,
  flow_slug text, message_id bigint, bulk boolean
);
-- Scratch rows of report_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._report_step as (
  run_id uuid, step_slug text, flow_slug text, step_type text, initial_tasks int
);
-- Scratch rows of _advance_runs_bulk, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._new_step as (
  flow_slug text, run_id uuid, step_slug text, initial_tasks int, remaining_deps int,
  started_at timestamptz, start_delay int, step_index int
);
-- Checks of flow definitions (create_flow, add_step, flow shapes, ensure_flow_compiled) raise
-- SQLSTATE 22023 (invalid_parameter_value) with a message that names the flow, the step and what
-- to do, so that a bad definition fails when it is made.
create or replace function pgflow._check_option(p_what text, p_name text, p_value int, p_min int)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is not null and p_value < p_min then
    raise exception '%: % must be % or more, got %', p_what, p_name, p_min, p_value
      using errcode = '22023';
  end if;
end;
$$;
create or replace function pgflow._check_slug(p_kind text, p_slug text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgflow.is_valid_slug(p_slug) then
    raise exception 'invalid % slug %: a slug is 1 to 128 characters of letters, digits and '
      'underscores, does not start with a digit, and is not the reserved word "run"',
      p_kind, coalesce(quote_literal(p_slug), 'NULL')
      using errcode = '22023';
  end if;
end;
$$;
create or replace function pgflow.create_flow(
  flow_slug text,
  max_attempts int default null,
  base_delay int default null,
  timeout int default null
)
returns pgflow.flows
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := create_flow.flow_slug;
  v_flow pgflow.flows;
  v_other text;
  v_what text := format('flow %L', create_flow.flow_slug);
begin
  perform pgflow._check_slug('flow', v_slug);
  if length(v_slug) > 47 then
    raise exception 'flow slug % is % characters long; a flow slug is also its pgmq queue name, '
      'which may have at most 47 characters: choose a shorter slug', quote_literal(v_slug), length(v_slug)
      using errcode = '22023';
  end if;
  perform pgflow._check_option(v_what, 'max_attempts', create_flow.max_attempts, 0);
  perform pgflow._check_option(v_what, 'base_delay', create_flow.base_delay, 0);
  perform pgflow._check_option(v_what, 'timeout', create_flow.timeout, 1);

  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if found then
    return v_flow;
  end if;

  select f.flow_slug into v_other from pgflow.flows f where lower(f.flow_slug) = lower(v_slug);
  if found then
    raise exception 'flow slug % differs only by letter case from existing flow %; pgmq queue '
      'names ignore case, so choose another slug', quote_literal(v_slug), quote_literal(v_other)
      using errcode = '22023';
  end if;

  insert into pgflow.flows (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (
    v_slug,
    coalesce(create_flow.max_attempts, 3),
    coalesce(create_flow.base_delay, 5),
    coalesce(create_flow.timeout, 60)
  )
  on conflict do nothing
  returning * into v_flow;

  if v_flow.flow_slug is null then
    -- another transaction created it (or a case twin) at the same moment
    select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
    if not found then
      raise exception 'flow slug % collides with a flow created concurrently that differs only by case',
        quote_literal(v_slug) using errcode = '22023';
    end if;
    return v_flow;
  end if;

  perform pgmq.create(v_slug);
  return v_flow;
end;
$$;
create or replace function pgflow.add_step(
  flow_slug text,
  step_slug text,
  deps_slugs text[] default '{}',
  max_attempts int default null,
  base_delay int default null,
  timeout int default null,
  start_delay int default null,
  step_type text default 'single',
  required_input_pattern jsonb default null,
  forbidden_input_pattern jsonb default null,
  when_unmet text default 'skip',
  when_exhausted text default 'fail'
)
returns pgflow.steps
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow_slug text := add_step.flow_slug;
  v_step_slug text := add_step.step_slug;
  v_deps text[] := coalesce(add_step.deps_slugs, '{}');
  v_step pgflow.steps;
  v_what text := format('step %L of flow %L', add_step.step_slug, add_step.flow_slug);
  v_missing text[];
  v_dup text;
  v_index int;
begin
  perform pgflow._check_slug('step', v_step_slug);
  perform 1 from pgflow.flows f where f.flow_slug = v_flow_slug for update;
  if not found then
    raise exception 'flow % does not exist; create it with pgflow.create_flow first',
      coalesce(quote_literal(v_flow_slug), 'NULL') using errcode = '22023';
  end if;

  select s.* into v_step from pgflow.steps s
  where s.flow_slug = v_flow_slug and s.step_slug = v_step_slug;
  if found then
    return v_step;
  end if;

  if add_step.step_type is null or add_step.step_type not in ('single', 'map') then
    raise exception '%: step_type must be ''single'' or ''map'', got %', v_what,
      coalesce(quote_literal(add_step.step_type), 'NULL') using errcode = '22023';
  end if;
  if add_step.when_unmet is null or add_step.when_unmet not in ('fail', 'skip', 'skip-cascade') then
    raise exception '%: when_unmet must be ''fail'', ''skip'' or ''skip-cascade'', got %', v_what,
      coalesce(quote_literal(add_step.when_unmet), 'NULL') using errcode = '22023';
  end if;
  if add_step.when_exhausted is null or add_step.when_exhausted not in ('fail', 'skip', 'skip-cascade') then
    raise exception '%: when_exhausted must be ''fail'', ''skip'' or ''skip-cascade'', got %', v_what,
      coalesce(quote_literal(add_step.when_exhausted), 'NULL') using errcode = '22023';
  end if;
  if add_step.required_input_pattern is not null
     and jsonb_typeof(add_step.required_input_pattern) <> 'object' then
    raise exception '%: required_input_pattern must be a JSON object, got %', v_what,
      jsonb_typeof(add_step.required_input_pattern) using errcode = '22023';
  end if;
  if add_step.forbidden_input_pattern is not null
     and jsonb_typeof(add_step.forbidden_input_pattern) <> 'object' then
    raise exception '%: forbidden_input_pattern must be a JSON object, got %', v_what,
      jsonb_typeof(add_step.forbidden_input_pattern) using errcode = '22023';
  end if;
  perform pgflow._check_option(v_what, 'max_attempts', add_step.max_attempts, 0);
  perform pgflow._check_option(v_what, 'base_delay', add_step.base_delay, 0);
  perform pgflow._check_option(v_what, 'timeout', add_step.timeout, 1);
  perform pgflow._check_option(v_what, 'start_delay', add_step.start_delay, 0);

  if v_step_slug = any (v_deps) then
    raise exception '%: a step cannot depend on itself', v_what using errcode = '22023';
  end if;
  select d into v_dup from unnest(v_deps) d group by d having count(*) > 1 limit 1;
  if found then
    raise exception '%: dependency % is listed more than once', v_what, quote_literal(v_dup)
      using errcode = '22023';
  end if;
  select array_agg(d order by d) into v_missing
  from unnest(v_deps) d
  where not exists (
    select 1 from pgflow.steps s where s.flow_slug = v_flow_slug and s.step_slug = d
  );
  if v_missing is not null then
    raise exception '%: unknown dependencies %; add the steps it depends on first',
      v_what, array_to_string(v_missing, ', ') using errcode = '22023';
  end if;
  if add_step.step_type = 'map' and cardinality(v_deps) > 1 then
    raise exception '%: a map step maps over one array, so it takes at most one dependency, got %',
      v_what, cardinality(v_deps) using errcode = '22023';
  end if;

  select coalesce(max(s.step_index) + 1, 0) into v_index
  from pgflow.steps s where s.flow_slug = v_flow_slug;

  insert into pgflow.steps (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted
  ) values (
    v_flow_slug, v_step_slug, add_step.step_type, v_index, cardinality(v_deps),
    add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay,
    add_step.required_input_pattern, add_step.forbidden_input_pattern,
    add_step.when_unmet, add_step.when_exhausted
  )
  returning * into v_step;

  insert into pgflow.deps (flow_slug, dep_slug, step_slug)
  select v_flow_slug, d, v_step_slug from unnest(v_deps) d;

  return v_step;
end;
$$;
create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from pgflow.step_tasks t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states ss where ss.flow_slug = p_flow_slug;
  delete from pgflow.runs r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows f where f.flow_slug = p_flow_slug;
  if exists (select 1 from pgmq.meta m where m.queue_name = lower(p_flow_slug)) then
    perform pgmq.drop_queue(lower(p_flow_slug));
  end if;
end;
$$;
create or replace function pgflow._pattern_shape(p_pattern jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_pattern is null then jsonb_build_object('defined', false)
    else jsonb_build_object('defined', true, 'value', p_pattern)
  end;
$$;
create or replace function pgflow._get_flow_shape(p_flow_slug text)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('steps', coalesce(jsonb_agg(
    jsonb_build_object(
      'slug', s.step_slug,
      'stepType', s.step_type,
      'dependencies', coalesce((
        select jsonb_agg(d.dep_slug order by d.dep_slug collate "C")
        from pgflow.deps d
        where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug
      ), '[]'::jsonb),
      'whenUnmet', s.when_unmet,
      'whenExhausted', s.when_exhausted,
      'requiredInputPattern', pgflow._pattern_shape(s.required_input_pattern),
      'forbiddenInputPattern', pgflow._pattern_shape(s.forbidden_input_pattern)
    ) order by s.step_index
  ), '[]'::jsonb))
  from pgflow.steps s
  where s.flow_slug = p_flow_slug;
$$;
-- A step of a shape with every omitted field given its default, and without runtime options,
-- so that two shapes can be compared field by field.
create or replace function pgflow._normalize_step_shape(p_step jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'slug', p_step -> 'slug',
    'stepType', coalesce(p_step -> 'stepType', '"single"'),
    'dependencies', coalesce((
      select jsonb_agg(d order by d collate "C")
      from jsonb_array_elements_text(coalesce(p_step -> 'dependencies', '[]')) d
    ), '[]'::jsonb),
    'whenUnmet', coalesce(p_step -> 'whenUnmet', '"skip"'),
    'whenExhausted', coalesce(p_step -> 'whenExhausted', '"fail"'),
    'requiredInputPattern', coalesce(p_step -> 'requiredInputPattern', '{"defined": false}'),
    'forbiddenInputPattern', coalesce(p_step -> 'forbiddenInputPattern', '{"defined": false}')
  );
$$;
create or replace function pgflow._check_shape(p_shape jsonb)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_shape is null or jsonb_typeof(p_shape) <> 'object'
     or jsonb_typeof(p_shape -> 'steps') is distinct from 'array' then
    raise exception 'a flow shape must be a JSON object with a "steps" array, got %',
      coalesce(left(p_shape::text, 200), 'NULL') using errcode = '22023';
  end if;
  if exists (
    select 1 from jsonb_array_elements(p_shape -> 'steps') s
    where jsonb_typeof(s) <> 'object' or jsonb_typeof(s -> 'slug') is distinct from 'string'
  ) then
    raise exception 'every step of a flow shape must be an object with a string "slug"'
      using errcode = '22023';
  end if;
end;
$$;
create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_diffs text[] := '{}';
  v_local jsonb[];
  v_db jsonb[];
  v_l jsonb;
  v_d jsonb;
  v_n int;
  v_field text;
  i int;
begin
  perform pgflow._check_shape(p_local);
  perform pgflow._check_shape(p_db);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_local from jsonb_array_elements(p_local -> 'steps') with ordinality t(s, o);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_db from jsonb_array_elements(p_db -> 'steps') with ordinality t(s, o);

  if cardinality(v_local) <> cardinality(v_db) then
    v_diffs := v_diffs || format('Step count differs: local %s, database %s',
      cardinality(v_local), cardinality(v_db));
  end if;

  v_n := greatest(cardinality(v_local), cardinality(v_db));
  for i in 1 .. v_n loop
    v_l := v_local[i];
    v_d := v_db[i];
    if v_d is null then
      v_diffs := v_diffs || format('Step %s (%s): present locally, missing in database',
        i - 1, v_l ->> 'slug');
      continue;
    elsif v_l is null then
      v_diffs := v_diffs || format('Step %s (%s): present in database, missing locally',
        i - 1, v_d ->> 'slug');
      continue;
    end if;
    foreach v_field in array array['slug', 'stepType', 'dependencies', 'whenUnmet',
                                   'whenExhausted', 'requiredInputPattern', 'forbiddenInputPattern'] loop
      if v_l -> v_field is distinct from v_d -> v_field then
        v_diffs := v_diffs || format('Step %s (%s): %s differs: local %s, database %s',
          i - 1, v_l ->> 'slug', v_field, v_l -> v_field, v_d -> v_field);
      end if;
    end loop;
  end loop;
  return v_diffs;
end;
$$;
create or replace function pgflow._shape_int(p_options jsonb, p_key text)
returns int
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_options is null or p_options -> p_key is null or p_options -> p_key = 'null'::jsonb then
    return null;
  end if;
  if jsonb_typeof(p_options -> p_key) <> 'number' then
    raise exception 'option % of a flow shape must be a whole number, got %', p_key, p_options -> p_key
      using errcode = '22023';
  end if;
  return (p_options ->> p_key)::int;
exception
  when invalid_text_representation or numeric_value_out_of_range then
    raise exception 'option % of a flow shape must be a whole number, got %', p_key, p_options -> p_key
      using errcode = '22023';
end;
$$;
create or replace function pgflow._create_flow_from_shape(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_opts jsonb := p_shape -> 'options';
  v_step jsonb;
  v_step_opts jsonb;
begin
  perform pgflow._check_shape(p_shape);
  perform pgflow.create_flow(
    p_flow_slug,
    max_attempts => pgflow._shape_int(v_opts, 'maxAttempts'),
    base_delay => pgflow._shape_int(v_opts, 'baseDelay'),
    timeout => pgflow._shape_int(v_opts, 'timeout')
  );
  for v_step in select s from jsonb_array_elements(p_shape -> 'steps') with ordinality t(s, o) order by o loop
    v_step_opts := v_step -> 'options';
    perform pgflow.add_step(
      flow_slug => p_flow_slug,
      step_slug => v_step ->> 'slug',
      deps_slugs => coalesce(
        (select array_agg(d) from jsonb_array_elements_text(coalesce(v_step -> 'dependencies', '[]')) d),
        '{}'),
      max_attempts => pgflow._shape_int(v_step_opts, 'maxAttempts'),
      base_delay => pgflow._shape_int(v_step_opts, 'baseDelay'),
      timeout => pgflow._shape_int(v_step_opts, 'timeout'),
      start_delay => pgflow._shape_int(v_step_opts, 'startDelay'),
      step_type => coalesce(v_step ->> 'stepType', 'single'),
      required_input_pattern => case when (v_step #> '{requiredInputPattern,defined}') = 'true'
                                     then v_step #> '{requiredInputPattern,value}' end,
      forbidden_input_pattern => case when (v_step #> '{forbiddenInputPattern,defined}') = 'true'
                                      then v_step #> '{forbiddenInputPattern,value}' end,
      when_unmet => coalesce(v_step ->> 'whenUnmet', 'skip'),
      when_exhausted => coalesce(v_step ->> 'whenExhausted', 'fail')
    );
  end loop;
end;
$$;
-- Runtime options are not part of a shape's identity; when a verified shape carries them, they
-- are applied, so a worker deploy can change retries and timeouts without data loss.
create or replace function pgflow._apply_shape_options(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_opts jsonb := p_shape -> 'options';
  v_step jsonb;
  v_step_opts jsonb;
begin
  if v_opts is not null and jsonb_typeof(v_opts) = 'object' then
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'max_attempts', pgflow._shape_int(v_opts, 'maxAttempts'), 0);
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'base_delay', pgflow._shape_int(v_opts, 'baseDelay'), 0);
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'timeout', pgflow._shape_int(v_opts, 'timeout'), 1);
    update pgflow.flows f set
      opt_max_attempts = coalesce(pgflow._shape_int(v_opts, 'maxAttempts'), 3),
      opt_base_delay = coalesce(pgflow._shape_int(v_opts, 'baseDelay'), 5),
      opt_timeout = coalesce(pgflow._shape_int(v_opts, 'timeout'), 60)
    where f.flow_slug = p_flow_slug;
  end if;
  for v_step in select s from jsonb_array_elements(p_shape -> 'steps') s loop
    v_step_opts := v_step -> 'options';
    continue when v_step_opts is null or jsonb_typeof(v_step_opts) <> 'object';
    update pgflow.steps s set
      opt_max_attempts = pgflow._shape_int(v_step_opts, 'maxAttempts'),
      opt_base_delay = pgflow._shape_int(v_step_opts, 'baseDelay'),
      opt_timeout = pgflow._shape_int(v_step_opts, 'timeout'),
      opt_start_delay = pgflow._shape_int(v_step_opts, 'startDelay')
    where s.flow_slug = p_flow_slug and s.step_slug = v_step ->> 'slug';
  end loop;
end;
$$;
create or replace function pgflow.ensure_flow_compiled(
  flow_slug text,
  shape jsonb,
  allow_data_loss boolean default false
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := ensure_flow_compiled.flow_slug;
  v_diffs text[];
begin
  perform pgflow._check_slug('flow', v_slug);
  perform pgflow._check_shape(ensure_flow_compiled.shape);
  -- one compiler per flow at a time; the lock ends with the transaction
  perform pg_advisory_xact_lock(1885434471, hashtext(v_slug));

  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'compiled', 'differences', '[]'::jsonb);
  end if;

  v_diffs := pgflow._compare_flow_shapes(ensure_flow_compiled.shape, pgflow._get_flow_shape(v_slug));
  if cardinality(v_diffs) = 0 then
    perform pgflow._apply_shape_options(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'verified', 'differences', '[]'::jsonb);
  end if;

  if coalesce(ensure_flow_compiled.allow_data_loss, false) then
    -- This function runs with its owner's rights, and worker and client roles may call it; the
    -- right to destroy a flow's data stays with whoever may call delete_flow_and_data (the
    -- owner). session_user is the login, which a non-superuser cannot change.
    if not has_function_privilege(session_user, 'pgflow.delete_flow_and_data(text)', 'execute') then
      raise exception 'flow % differs from the database and replacing it would delete its runs, '
        'which only the owner of schema pgflow may do; run the compile with allow_data_loss as that '
        'role, or deploy the changed flow under a new slug', quote_literal(v_slug)
        using errcode = '42501', detail = array_to_string(v_diffs, '; ');
    end if;
    perform pgflow.delete_flow_and_data(v_slug);
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'recompiled', 'differences', to_jsonb(v_diffs));
  end if;

  return jsonb_build_object('status', 'mismatch', 'differences', to_jsonb(v_diffs));
end;
$$;
-- Sends one event. With Supabase's realtime.send present, every event also goes there, so
-- clients of the contract see runs that our workers execute; our own delivery to Python is a
-- NOTIFY on channel pgflow_events when the setting pgflow.events is 'on' (per database: alter
-- database ... set pgflow.events = 'on'). It is off by default: NOTIFY serializes commits, and
-- costs about half of the throughput of short tasks.
create or replace function pgflow._emit(p_run_id uuid, p_event_name text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_text text;
begin
  if to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null then
    perform realtime.send(p_payload, p_event_name, 'pgflow:run:' || p_run_id::text, false);
  end if;
  if coalesce(current_setting('pgflow.events', true), '') = 'on' then
    v_text := p_payload::text;
    -- NOTIFY payloads are limited to 8000 bytes: large inputs and outputs stay in the tables
    if octet_length(v_text) > 7900 then
      v_text := (p_payload - 'input' - 'output' || jsonb_build_object('truncated', true))::text;
    end if;
    if octet_length(v_text) <= 7900 then
      perform pg_notify('pgflow_events', v_text);
    end if;
  end if;
end;
$$;
-- Whether events must be built at all: for Supabase's realtime.send, or for our NOTIFY when the
-- database enables it (alter database ... set pgflow.events = 'on').
create or replace function pgflow._events_enabled()
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null
      or coalesce(current_setting('pgflow.events', true), '') = 'on';
$$;
-- Wakes workers of a flow when tasks become visible. Postgres folds identical notifications of a
-- transaction into one, so a fan-out of many tasks sends one notification.
create or replace function pgflow._notify_tasks(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(current_setting('pgflow.wakeups', true), '') <> 'off' then
    perform pg_notify('pgflow_tasks', p_flow_slug);
  end if;
end;
$$;
create or replace function pgflow._archive_messages(p_flow_slug text, p_msg_ids bigint[])
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_msg_ids is not null and cardinality(p_msg_ids) > 0 then
    perform pgmq.archive(p_flow_slug, p_msg_ids);
  end if;
end;
$$;
create or replace function pgflow.set_vt_batch(queue_name text, msg_ids bigint[], vt_offsets int[])
returns setof pgmq.message_record
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(cardinality(set_vt_batch.msg_ids), 0) <> coalesce(cardinality(set_vt_batch.vt_offsets), 0) then
    raise exception 'set_vt_batch: msg_ids has % elements but vt_offsets has %; give one offset per message',
      coalesce(cardinality(set_vt_batch.msg_ids), 0), coalesce(cardinality(set_vt_batch.vt_offsets), 0)
      using errcode = '22023';
  end if;
  if coalesce(cardinality(set_vt_batch.msg_ids), 0) = 0 then
    return;
  end if;
  return query execute format(
    'update pgmq.%I q set vt = clock_timestamp() + make_interval(secs => v.off)
       from unnest($1, $2) as v(id, off)
      where q.msg_id = v.id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.last_read_at, q.vt, q.message, q.headers',
    pgmq.format_table_name(set_vt_batch.queue_name, 'q'))
  using set_vt_batch.msg_ids, set_vt_batch.vt_offsets;
end;
$$;
-- Reads messages of a flow's queue, waiting up to max_poll_seconds for some to become visible.
-- Workers on the contract's per-task path read with it, so that they need no rights on pgmq's
-- tables: it runs with its owner's rights and reads only the queues of flows.
create or replace function pgflow.read_with_poll(
  queue_name text,
  vt int,
  qty int,
  max_poll_seconds int default 5,
  poll_interval_ms int default 100,
  conditional jsonb default '{}'
)
returns setof pgmq.message_record
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_stop timestamptz := clock_timestamp() + make_interval(secs => greatest(coalesce(read_with_poll.max_poll_seconds, 0), 0));
begin
  if not exists (select 1 from pgflow.flows f where f.flow_slug = read_with_poll.queue_name) then
    raise exception 'queue % is not the queue of a pgflow flow', coalesce(quote_literal(read_with_poll.queue_name), 'NULL')
      using errcode = '22023';
  end if;
  loop
    return query select * from pgmq.read(read_with_poll.queue_name, read_with_poll.vt, read_with_poll.qty,
                                         coalesce(read_with_poll.conditional, '{}'));
    exit when found or clock_timestamp() >= v_stop;
    perform pg_sleep(greatest(coalesce(read_with_poll.poll_interval_ms, 100), 1) / 1000.0);
  end loop;
end;
$$;
create or replace function pgflow.calculate_retry_delay(
  base_delay numeric,
  attempts_count int,
  max_delay int default 3600
)
returns int
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
  -- the exponent is clamped before the power so that a huge attempt count cannot overflow
  select least(
    floor(greatest(base_delay, 0) * power(2::numeric, least(greatest(attempts_count, 0), 64))),
    greatest(max_delay, 0)
  )::int;
$$;
-- Cancels every open (queued or started) task of a run and archives their messages.
create or replace function pgflow._cancel_open_tasks(p_run_id uuid, p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_msgs bigint[];
begin
  with cancelled as (
    update pgflow.step_tasks t set status = 'cancelled'
     where t.run_id = p_run_id and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(c.message_id) into v_msgs from cancelled c where c.message_id is not null;
  perform pgflow._archive_messages(p_flow_slug, v_msgs);
end;
$$;
-- Fails a started run: open tasks are cancelled and their messages archived.
create or replace function pgflow._fail_run(p_run_id uuid, p_error_message text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
begin
  update pgflow.runs r
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where r.run_id = p_run_id and r.status = 'started'
  returning r.* into v_run;
  if v_run.run_id is null then
    return;
  end if;

  perform pgflow._cancel_open_tasks(p_run_id, v_run.flow_slug);

  perform pgflow._emit(p_run_id, 'run:failed', jsonb_build_object(
    'event_type', 'run:failed',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'failed',
    'error_message', p_error_message,
    'failed_at', v_run.failed_at));
end;
$$;
-- Fails one step and then its run.
create or replace function pgflow._fail_step(p_run_id uuid, p_step_slug text, p_error_message text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state pgflow.step_states;
begin
  update pgflow.step_states ss
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug and ss.status in ('created', 'started')
  returning ss.* into v_state;
  if v_state.run_id is not null then
    perform pgflow._emit(p_run_id, 'step:' || p_step_slug || ':failed', jsonb_build_object(
      'event_type', 'step:failed',
      'run_id', p_run_id,
      'step_slug', p_step_slug,
      'status', 'failed',
      'error_message', p_error_message,
      'failed_at', v_state.failed_at));
  end if;
  perform pgflow._fail_run(p_run_id, p_error_message);
end;
$$;
-- Marks the given steps skipped (reason per step), skips their open tasks, and takes them off
-- the run's remaining steps. Children outside the set lose one remaining dependency each; a
-- dependent map whose task count is still unknown learns that it has none.
create or replace function pgflow._skip_steps(p_run_id uuid, p_steps text[], p_reasons text[])
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_count int;
  v_msgs bigint[];
  v_state record;
begin
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;

  with skipped as (
    update pgflow.step_states ss
       set status = 'skipped', skip_reason = x.reason, skipped_at = now(), remaining_tasks = null
      from unnest(p_steps, p_reasons) as x(slug, reason)
     where ss.run_id = p_run_id and ss.step_slug = x.slug and ss.status in ('created', 'started')
    returning ss.step_slug
  )
  select count(*) into v_count from skipped;
  if v_count = 0 then
    return 0;
  end if;

  with open_tasks as (
    update pgflow.step_tasks t set status = 'skipped'
     where t.run_id = p_run_id and t.step_slug = any (p_steps) and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(o.message_id) into v_msgs from open_tasks o where o.message_id is not null;
  perform pgflow._archive_messages(v_flow, v_msgs);

  update pgflow.step_states child
     set remaining_deps = child.remaining_deps - e.n,
         initial_tasks = case when s.step_type = 'map' and child.initial_tasks is null then 0
                              else child.initial_tasks end
    from (
      select d.step_slug, count(*)::int as n
        from pgflow.deps d
       where d.flow_slug = v_flow and d.dep_slug = any (p_steps) and not (d.step_slug = any (p_steps))
       group by d.step_slug
    ) e, pgflow.steps s
   where child.run_id = p_run_id and child.step_slug = e.step_slug and child.status = 'created'
     and s.flow_slug = v_flow and s.step_slug = e.step_slug;

  update pgflow.runs r set remaining_steps = r.remaining_steps - v_count where r.run_id = p_run_id;

  for v_state in
    select ss.step_slug, ss.skip_reason, ss.skipped_at
      from pgflow.step_states ss join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
     where ss.run_id = p_run_id and ss.step_slug = any (p_steps) and ss.status = 'skipped'
     order by s.step_index
  loop
    perform pgflow._emit(p_run_id, 'step:' || v_state.step_slug || ':skipped', jsonb_build_object(
      'event_type', 'step:skipped',
      'run_id', p_run_id,
      'flow_slug', v_flow,
      'step_slug', v_state.step_slug,
      'status', 'skipped',
      'skip_reason', v_state.skip_reason,
      'skipped_at', v_state.skipped_at));
  end loop;
  return v_count;
end;
$$;
-- Skips a step and every step that depends on it, directly or not; the step gets p_skip_reason,
-- its dependents 'dependency_skipped'. Returns how many steps were skipped.
create or replace function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_steps text[];
  v_reasons text[];
begin
  if _cascade_force_skip_steps.skip_reason is null
     or _cascade_force_skip_steps.skip_reason not in ('condition_unmet', 'handler_failed', 'dependency_skipped') then
    raise exception 'skip_reason must be ''condition_unmet'', ''handler_failed'' or ''dependency_skipped'', got %',
      coalesce(quote_literal(_cascade_force_skip_steps.skip_reason), 'NULL') using errcode = '22023';
  end if;
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = _cascade_force_skip_steps.run_id;
  if v_flow is null then
    raise exception 'run % does not exist', _cascade_force_skip_steps.run_id using errcode = '22023';
  end if;

  with recursive dependents(slug) as (
    select _cascade_force_skip_steps.step_slug
    union
    select d.step_slug from pgflow.deps d join dependents x on d.dep_slug = x.slug
     where d.flow_slug = v_flow
  )
  select array_agg(x.slug),
         array_agg(case when x.slug = _cascade_force_skip_steps.step_slug
                        then _cascade_force_skip_steps.skip_reason else 'dependency_skipped' end)
    into v_steps, v_reasons
    from dependents x;

  return pgflow._skip_steps(_cascade_force_skip_steps.run_id, v_steps, v_reasons);
end;
$$;
-- Bookkeeping after a step completed: children lose a dependency, a dependent map learns its
-- task count, the run has one step less to go, and step:completed is sent.
create or replace function pgflow._after_step_completed(p_run_id uuid, p_step_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state pgflow.step_states;
  v_step pgflow.steps;
begin
  select ss.* into v_state from pgflow.step_states ss
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug;
  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_state.flow_slug and s.step_slug = p_step_slug;

  update pgflow.step_states child
     set remaining_deps = child.remaining_deps - 1,
         initial_tasks = case
           when cs.step_type = 'map' and child.initial_tasks is null then
             case when v_step.step_type = 'map' then v_state.initial_tasks
                  when jsonb_typeof(v_state.output) = 'array' then jsonb_array_length(v_state.output)
                  else 0 end
           else child.initial_tasks end
    from pgflow.deps d, pgflow.steps cs
   where d.flow_slug = v_state.flow_slug and d.dep_slug = p_step_slug
     and cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
     and child.run_id = p_run_id and child.step_slug = d.step_slug and child.status = 'created';

  update pgflow.runs r set remaining_steps = r.remaining_steps - 1 where r.run_id = p_run_id;

  perform pgflow._emit(p_run_id, 'step:' || p_step_slug || ':completed', jsonb_build_object(
    'event_type', 'step:completed',
    'run_id', p_run_id,
    'step_slug', p_step_slug,
    'status', 'completed',
    'output', v_state.output,
    'completed_at', v_state.completed_at));
end;
$$;
create or replace function pgflow.maybe_complete_run(run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
  v_output jsonb;
begin
  select r.* into v_run from pgflow.runs r where r.run_id = maybe_complete_run.run_id;
  if v_run.run_id is null or v_run.status <> 'started' or v_run.remaining_steps > 0 then
    return;
  end if;

  select jsonb_object_agg(ss.step_slug, ss.output) into v_output
    from pgflow.step_states ss
   where ss.run_id = v_run.run_id and ss.status = 'completed'
     and not exists (
       select 1 from pgflow.deps d where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug
     );

  update pgflow.runs r set status = 'completed', completed_at = now(), output = v_output
   where r.run_id = v_run.run_id
  returning r.* into v_run;

  perform pgflow._emit(v_run.run_id, 'run:completed', jsonb_build_object(
    'event_type', 'run:completed',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'completed',
    'output', v_run.output,
    'completed_at', v_run.completed_at));
end;
$$;
-- The value a step's condition is checked against: the run input for a root step, the object of
-- completed dependency outputs for a dependent step (skipped dependencies left out).
create or replace function pgflow._condition_subject(p_run_id uuid, p_step pgflow.steps)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_step.deps_count = 0 then (select r.input from pgflow.runs r where r.run_id = p_run_id)
    else coalesce((
      select jsonb_object_agg(d.dep_slug, ps.output)
        from pgflow.deps d
        join pgflow.step_states ps on ps.run_id = p_run_id and ps.step_slug = d.dep_slug
       where d.flow_slug = p_step.flow_slug and d.step_slug = p_step.step_slug and ps.status = 'completed'
    ), '{}'::jsonb)
  end;
$$;
create or replace function pgflow.cascade_resolve_conditions(run_id uuid)
returns boolean
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := cascade_resolve_conditions.run_id;
  v_step pgflow.steps;
  v_subject jsonb;
  v_changed boolean;
begin
  loop
    if not exists (select 1 from pgflow.runs r where r.run_id = v_run_id and r.status = 'started') then
      return false;
    end if;
    v_changed := false;
    for v_step in
      select s.*
        from pgflow.step_states ss
        join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and (s.required_input_pattern is not null or s.forbidden_input_pattern is not null)
       order by s.step_index
    loop
      -- an earlier skip in this pass may have reached this step already
      continue when not exists (
        select 1 from pgflow.step_states ss
         where ss.run_id = v_run_id and ss.step_slug = v_step.step_slug and ss.status = 'created');
      v_subject := pgflow._condition_subject(v_run_id, v_step);
      continue when (v_step.required_input_pattern is null or v_subject @> v_step.required_input_pattern)
                and (v_step.forbidden_input_pattern is null or not v_subject @> v_step.forbidden_input_pattern);
      if v_step.when_unmet = 'fail' then
        perform pgflow._fail_step(v_run_id, v_step.step_slug, 'Condition not met');
        return false;
      elsif v_step.when_unmet = 'skip-cascade' then
        perform pgflow._cascade_force_skip_steps(v_run_id, v_step.step_slug, 'condition_unmet');
      else
        perform pgflow._skip_steps(v_run_id, array[v_step.step_slug], array['condition_unmet']);
      end if;
      v_changed := true;
    end loop;
    exit when not v_changed;
  end loop;
  return true;
end;
$$;
-- Completes, wave after wave, every ready step that has no tasks: a map over an empty array
-- outputs [], a single step NULL. Conditions of newly ready steps are resolved between waves,
-- so a step whose condition fails is skipped rather than completed. The number of waves is
-- bounded by the number of steps in the run.
create or replace function pgflow.cascade_complete_taskless_steps(run_id uuid)
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := cascade_complete_taskless_steps.run_id;
  v_total int := 0;
  v_wave text[];
  v_slug text;
  v_max_waves int;
begin
  select count(*) into v_max_waves from pgflow.step_states ss where ss.run_id = v_run_id;
  for i in 1 .. v_max_waves + 1 loop
    exit when not pgflow.cascade_resolve_conditions(v_run_id);

    with done as (
      update pgflow.step_states ss
         set status = 'completed', completed_at = now(), remaining_tasks = 0,
             output = case when s.step_type = 'map' then '[]'::jsonb else null end
        from pgflow.steps s
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and ss.initial_tasks = 0
         and s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
      returning ss.step_slug, s.step_index
    )
    select array_agg(d.step_slug order by d.step_index) into v_wave from done d;
    exit when v_wave is null;

    foreach v_slug in array v_wave loop
      perform pgflow._after_step_completed(v_run_id, v_slug);
    end loop;
    v_total := v_total + cardinality(v_wave);
  end loop;
  return v_total;
end;
$$;
create or replace function pgflow.start_ready_steps(run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := start_ready_steps.run_id;
  v_flow text;
  v_step record;
  v_msg_ids bigint[];
  v_any boolean := false;
begin
  select r.flow_slug into v_flow from pgflow.runs r
   where r.run_id = v_run_id and r.status = 'started';
  if v_flow is null then
    return;
  end if;

  for v_step in
    with started as (
      update pgflow.step_states ss
         set status = 'started', started_at = now(), remaining_tasks = ss.initial_tasks
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and ss.initial_tasks > 0
      returning ss.step_slug, ss.initial_tasks, ss.remaining_deps, ss.started_at
    )
    select st.*, s.step_index, coalesce(s.opt_start_delay, 0) as start_delay
      from started st join pgflow.steps s on s.flow_slug = v_flow and s.step_slug = st.step_slug
     order by s.step_index
  loop
    perform pgflow._emit(v_run_id, 'step:' || v_step.step_slug || ':started', jsonb_build_object(
      'event_type', 'step:started',
      'run_id', v_run_id,
      'step_slug', v_step.step_slug,
      'status', 'started',
      'started_at', v_step.started_at,
      'remaining_tasks', v_step.initial_tasks,
      'remaining_deps', v_step.remaining_deps));

    -- message ids come from the queue's identity sequence in insertion order, so the n-th
    -- smallest id belongs to task n
    select array_agg(m.id order by m.id) into v_msg_ids
      from pgmq.send_batch(
        v_flow,
        array(
          select jsonb_build_object('flow_slug', v_flow, 'run_id', v_run_id,
                                    'step_slug', v_step.step_slug, 'task_index', i)
            from generate_series(0, v_step.initial_tasks - 1) i
           order by i),
        v_step.start_delay) as m(id);

    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
    select v_flow, v_run_id, v_step.step_slug, (m.ord - 1)::int, m.id
      from unnest(v_msg_ids) with ordinality as m(id, ord);
    v_any := v_any or v_step.start_delay = 0;
  end loop;

  if v_any then
    perform pgflow._notify_tasks(v_flow);
  end if;
end;
$$;
-- Moves a run forward after any change: conditions, taskless steps, ready steps, completion.
create or replace function pgflow._advance_run(p_run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgflow.cascade_complete_taskless_steps(p_run_id);
  perform pgflow.start_ready_steps(p_run_id);
  perform pgflow.maybe_complete_run(p_run_id);
end;
$$;
-- Starts every ready step of the given runs and completes the runs that have nothing left, set
-- by set. Only for runs whose ready steps need no condition check and have tasks: the caller
-- sends every other run through _advance_run.
create or replace function pgflow._advance_runs_bulk(p_run_ids uuid[], p_events boolean)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_new pgflow._new_step[];
  v_group record;
  v_ids bigint[];
  v_state record;
  v_run pgflow.runs;
  v_wake text[];
begin
  with started as (
    update pgflow.step_states ss
       set status = 'started', started_at = now(), remaining_tasks = ss.initial_tasks
      from pgflow.runs r
     where ss.run_id = any (p_run_ids) and r.run_id = ss.run_id and r.status = 'started'
       and ss.status = 'created' and ss.remaining_deps = 0 and ss.initial_tasks > 0
    returning ss.flow_slug, ss.run_id, ss.step_slug, ss.initial_tasks, ss.remaining_deps, ss.started_at
  )
  select coalesce(array_agg(row(st.flow_slug, st.run_id, st.step_slug, st.initial_tasks, st.remaining_deps,
                                st.started_at, coalesce(s.opt_start_delay, 0), s.step_index)::pgflow._new_step),
                  '{}')
    into v_new
    from started st join pgflow.steps s on s.flow_slug = st.flow_slug and s.step_slug = st.step_slug;

  -- one message batch per flow and start delay; ids follow insertion order
  for v_group in
    select n.flow_slug, n.start_delay from unnest(v_new) n group by n.flow_slug, n.start_delay
  loop
    select array_agg(m.id order by m.id) into v_ids
      from pgmq.send_batch(
        v_group.flow_slug,
        array(
          select jsonb_build_object('flow_slug', n.flow_slug, 'run_id', n.run_id,
                                    'step_slug', n.step_slug, 'task_index', i)
            from unnest(v_new) n, generate_series(0, n.initial_tasks - 1) i
           where n.flow_slug = v_group.flow_slug and n.start_delay = v_group.start_delay
           order by n.run_id, n.step_slug, i),
        v_group.start_delay) as m(id);
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
    select t.flow_slug, t.run_id, t.step_slug, t.i, v_ids[t.ord]
      from (
        select n.flow_slug, n.run_id, n.step_slug, i,
               row_number() over (order by n.run_id, n.step_slug, i) as ord
          from unnest(v_new) n, generate_series(0, n.initial_tasks - 1) i
         where n.flow_slug = v_group.flow_slug and n.start_delay = v_group.start_delay
      ) t;
    if v_group.start_delay = 0 then
      v_wake := v_wake || v_group.flow_slug;
    end if;
  end loop;

  if p_events then
    for v_state in select n.* from unnest(v_new) n order by n.run_id, n.step_index loop
      perform pgflow._emit(v_state.run_id, 'step:' || v_state.step_slug || ':started', jsonb_build_object(
        'event_type', 'step:started',
        'run_id', v_state.run_id,
        'step_slug', v_state.step_slug,
        'status', 'started',
        'started_at', v_state.started_at,
        'remaining_tasks', v_state.initial_tasks,
        'remaining_deps', v_state.remaining_deps));
    end loop;
  end if;

  for v_run in
    update pgflow.runs r
       set status = 'completed', completed_at = now(),
           output = (
             select jsonb_object_agg(ss.step_slug, ss.output)
               from pgflow.step_states ss
              where ss.run_id = r.run_id and ss.status = 'completed'
                and not exists (
                  select 1 from pgflow.deps d where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug))
     where r.run_id = any (p_run_ids) and r.status = 'started' and r.remaining_steps = 0
    returning r.*
  loop
    if p_events then
      perform pgflow._emit(v_run.run_id, 'run:completed', jsonb_build_object(
        'event_type', 'run:completed',
        'run_id', v_run.run_id,
        'flow_slug', v_run.flow_slug,
        'status', 'completed',
        'output', v_run.output,
        'completed_at', v_run.completed_at));
    end if;
  end loop;

  perform pgflow._notify_tasks(w) from (select distinct x as w from unnest(v_wake) x) f;
end;
$$;
create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := start_flow.flow_slug;
  v_root_map text;
  v_run pgflow.runs;
  v_input_length int;
begin
  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    raise exception 'flow % does not exist; define it first (pgflow.create_flow / ensure_flow_compiled)',
      coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  select s.step_slug into v_root_map from pgflow.steps s
   where s.flow_slug = v_slug and s.step_type = 'map' and s.deps_count = 0
   order by s.step_index limit 1;
  if v_root_map is not null
     and (start_flow.input is null or jsonb_typeof(start_flow.input) <> 'array') then
    raise exception 'flow % starts with root map step %, so its input must be a JSON array, got %',
      quote_literal(v_slug), quote_literal(v_root_map),
      coalesce(jsonb_typeof(start_flow.input), 'SQL NULL') using errcode = '22023';
  end if;
  if start_flow.input is null then
    raise exception 'the input of flow % must not be SQL NULL; pass a JSON value such as ''{}''::jsonb or ''null''::jsonb',
      quote_literal(v_slug) using errcode = '22023';
  end if;

  -- computed apart: inside the insert's CASE the planner would fold it even for non-arrays
  if jsonb_typeof(start_flow.input) = 'array' then
    v_input_length := jsonb_array_length(start_flow.input);
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
  select coalesce(start_flow.run_id, gen_random_uuid()), v_slug, start_flow.input, count(*)
    from pgflow.steps s where s.flow_slug = v_slug
  returning * into v_run;

  insert into pgflow.step_states (flow_slug, run_id, step_slug, remaining_deps, initial_tasks)
  select v_slug, v_run.run_id, s.step_slug, s.deps_count,
         case when s.step_type = 'single' then 1
              when s.deps_count = 0 then v_input_length
              else null end
    from pgflow.steps s where s.flow_slug = v_slug;

  perform pgflow._emit(v_run.run_id, 'run:started', jsonb_build_object(
    'event_type', 'run:started',
    'run_id', v_run.run_id,
    'flow_slug', v_slug,
    'input', v_run.input,
    'status', 'started',
    'remaining_steps', v_run.remaining_steps,
    'started_at', v_run.started_at));

  perform pgflow._advance_run(v_run.run_id);

  return query select r.* from pgflow.runs r where r.run_id = v_run.run_id;
end;
$$;
create or replace function pgflow.get_run_with_states(run_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'run', to_jsonb(r),
    'steps', coalesce((
      select jsonb_agg(to_jsonb(ss) order by s.step_index)
        from pgflow.step_states ss
        join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
       where ss.run_id = r.run_id
    ), '[]'::jsonb))
  from pgflow.runs r
  where r.run_id = get_run_with_states.run_id;
$$;
create or replace function pgflow.start_flow_with_states(flow_slug text, input jsonb, run_id uuid default null)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid;
begin
  select r.run_id into v_run_id
    from pgflow.start_flow(start_flow_with_states.flow_slug, start_flow_with_states.input,
                           start_flow_with_states.run_id) r;
  return pgflow.get_run_with_states(v_run_id);
end;
$$;
-- Our addition: cancels a started run. Its open tasks are cancelled and their messages archived;
-- results that arrive later are ignored like any late callback. Returns the run; a run that has
-- already finished is returned unchanged.
create or replace function pgflow.cancel_run(run_id uuid)
returns pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
begin
  select r.* into v_run from pgflow.runs r where r.run_id = cancel_run.run_id for update;
  if v_run.run_id is null then
    raise exception 'run % does not exist', coalesce(cancel_run.run_id::text, 'NULL')
      using errcode = '22023';
  end if;
  if v_run.status <> 'started' then
    return v_run;
  end if;

  update pgflow.runs r
     set status = 'cancelled', cancelled_at = now(), error_message = 'Run cancelled'
   where r.run_id = v_run.run_id
  returning r.* into v_run;

  perform pgflow._cancel_open_tasks(v_run.run_id, v_run.flow_slug);

  perform pgflow._emit(v_run.run_id, 'run:cancelled', jsonb_build_object(
    'event_type', 'run:cancelled',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'cancelled',
    'cancelled_at', v_run.cancelled_at));
  return v_run;
end;
$$;
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := start_tasks.flow_slug;
  v_runs uuid[];
  v_steps text[];
  v_indexes int[];
  v_ids bigint[];
  v_offsets int[];
begin
  if start_tasks.worker_id is null
     or not exists (select 1 from pgflow.workers w where w.worker_id = start_tasks.worker_id) then
    raise exception 'worker % is not registered; insert its pgflow.workers row before claiming tasks',
      coalesce(start_tasks.worker_id::text, 'NULL') using errcode = '22023';
  end if;

  with claimable as (
    -- driven by the message ids, so that each task is one index lookup whatever the
    -- statistics say about the size of its run
    select t.run_id, t.step_slug, t.task_index
      from unnest(start_tasks.msg_ids) as m(id)
      join pgflow.step_tasks t on t.flow_slug = v_slug and t.message_id = m.id
      join pgflow.runs r on r.run_id = t.run_id
      join pgflow.step_states ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
     where t.status = 'queued' and r.status = 'started' and ss.status = 'started'
     for update of t
  ), claimed as (
    update pgflow.step_tasks t
       set status = 'started', attempts_count = t.attempts_count + 1, started_at = now(),
           last_worker_id = start_tasks.worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.run_id, t.step_slug, t.task_index, t.message_id
  )
  select array_agg(c.run_id order by c.message_id), array_agg(c.step_slug order by c.message_id),
         array_agg(c.task_index order by c.message_id), array_agg(c.message_id order by c.message_id),
         array_agg(coalesce(s.opt_timeout, f.opt_timeout) + 2 order by c.message_id)
    into v_runs, v_steps, v_indexes, v_ids, v_offsets
    from claimed c
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug
    join pgflow.flows f on f.flow_slug = v_slug;
  if v_ids is null then
    return;
  end if;

  -- the message stays hidden for as long as the handler may run, plus a margin; done as its own
  -- statement so that it really runs
  perform pgflow.set_vt_batch(v_slug, v_ids, v_offsets);

  return query
  select v_slug,
         c.run_id,
         c.step_slug,
         case
           when s.step_type = 'map' and s.deps_count = 0 then r.input -> c.task_index
           when s.step_type = 'map' then (
             select ps.output -> c.task_index
               from pgflow.deps d
               join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
              where d.flow_slug = v_slug and d.step_slug = c.step_slug)
           when s.deps_count = 0 then '{}'::jsonb
           else coalesce((
             select jsonb_object_agg(d.dep_slug, ps.output)
               from pgflow.deps d
               join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
              where d.flow_slug = v_slug and d.step_slug = c.step_slug and ps.status = 'completed'),
             '{}'::jsonb)
         end,
         c.message_id,
         c.task_index,
         case when s.step_type = 'single' and s.deps_count = 0 then r.input end
    from unnest(v_runs, v_steps, v_indexes, v_ids) as c(run_id, step_slug, task_index, message_id)
    join pgflow.runs r on r.run_id = c.run_id
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug
   order by c.message_id;
end;
$$;
-- Batched worker call (our addition, contract section 9): the outcome is the same as calling
-- start_tasks with the messages read.
--
-- Claims up to qty visible tasks of a flow in one round trip: reads their messages (hiding each
-- for its step's timeout + 2 s), starts the tasks, and returns what a worker needs to build the
-- handler inputs, as raw JSON text. Two kinds of rows:
--   kind 'task': msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload
--       mode 0: input is the run input (blob run_id + '')
--       mode 1: input is {dep: output} of the deps listed (blobs run_id + dep; a dep without a
--               blob was skipped and is left out)
--       mode 2: input is element task_index of the array in blob run_id + deps[1] (or of the run
--               input when deps is empty)
--       mode 3: input is payload itself (an element of a large parent array, cut out here so the
--               whole array is not sent for every batch)
--   kind 'blob': run_id, step_slug ('' for the run input), payload: each blob once per call.
-- Messages whose task can no longer run (finished, cancelled, or gone) are archived.
create or replace function pgflow.claim_tasks(
  flow_slug text,
  worker_id uuid,
  qty int,
  inline_array_limit int default 262144
)
returns table (
  kind text,
  msg_id bigint,
  run_id text,
  step_slug text,
  task_index int,
  attempt int,
  mode int,
  deps text[],
  payload text
)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := claim_tasks.flow_slug;
  v_flow pgflow.flows;
  v_msg_ids bigint[];
  v_dead bigint[];
  v_parent record;
  v_array jsonb;
  v_claims pgflow._claim_item[];
  v_sent_runs uuid[] := '{}';
  v_sent_steps text[] := '{}';
begin
  if claim_tasks.qty is null or claim_tasks.qty < 1 then
    raise exception 'claim_tasks: qty must be 1 or more, got %', coalesce(claim_tasks.qty::text, 'NULL')
      using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;
  if claim_tasks.worker_id is null
     or not exists (select 1 from pgflow.workers w where w.worker_id = claim_tasks.worker_id) then
    raise exception 'worker % is not registered; insert its pgflow.workers row before claiming tasks',
      coalesce(claim_tasks.worker_id::text, 'NULL') using errcode = '22023';
  end if;

  execute format(
    'with picked as (
       select q.msg_id, q.message ->> ''step_slug'' as step_slug
         from pgmq.%1$I q
        where q.vt <= clock_timestamp()
        order by q.msg_id
        limit $1
        for update skip locked
     ), hidden as (
       update pgmq.%1$I q
          set vt = clock_timestamp() + make_interval(secs => coalesce(s.opt_timeout, $2) + 2),
              read_ct = q.read_ct + 1,
              last_read_at = clock_timestamp()
         from picked p
         left join pgflow.steps s on s.flow_slug = $3 and s.step_slug = p.step_slug
        where q.msg_id = p.msg_id
       returning q.msg_id
     )
     select array_agg(h.msg_id) from hidden h',
    pgmq.format_table_name(v_slug, 'q'))
  into v_msg_ids
  using claim_tasks.qty, v_flow.opt_timeout, v_slug;

  if v_msg_ids is null then
    return;
  end if;

  -- The claimed tasks are kept in an array of an owner-defined type, never in a session temp
  -- table: a caller could create such a table first (with a trigger) and have this security
  -- definer function run its code with the owner's rights.
  with claimable as (
    -- one index lookup per message whatever the statistics say (offset 0 keeps the planner
    -- from turning the lookups into a hash join over the whole table after a burst of inserts)
    select t.run_id, t.step_slug, t.task_index
      from unnest(v_msg_ids) as m(id)
      cross join lateral (
        select t.* from pgflow.step_tasks t
         where t.flow_slug = v_slug and t.message_id = m.id and t.status = 'queued' offset 0
      ) x
      join pgflow.step_tasks t
        on t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index
      join pgflow.runs r on r.run_id = t.run_id
      join pgflow.step_states ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
     where r.status = 'started' and ss.status = 'started'
     for update of t
  ), claimed as (
    update pgflow.step_tasks t
       set status = 'started', attempts_count = t.attempts_count + 1, started_at = now(),
           last_worker_id = claim_tasks.worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.message_id, t.run_id, t.step_slug, t.task_index, t.attempts_count
  )
  select coalesce(array_agg(row(c.message_id, c.run_id, c.step_slug, c.task_index, c.attempts_count,
                                s.step_type, s.deps_count, null)::pgflow._claim_item
                            order by c.message_id), '{}')
    into v_claims
    from claimed c
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug;

  -- messages that can never be used again: their task finished, was cancelled, or is gone
  if cardinality(v_claims) < cardinality(v_msg_ids) then
    select array_agg(m.id) into v_dead
      from unnest(v_msg_ids) m(id)
     where not exists (select 1 from unnest(v_claims) c where c.msg_id = m.id)
       and not exists (
         select 1 from pgflow.step_tasks t
          where t.flow_slug = v_slug and t.message_id = m.id and t.status in ('queued', 'started'));
    perform pgflow._archive_messages(v_slug, v_dead);
  end if;

  -- parents of dependent maps: small arrays go once as a blob and are sliced by the worker;
  -- the elements of large ones are cut out here from one in-memory copy of the array
  for v_parent in
    select c.run_id, d.dep_slug, max(pg_column_size(ps.output)) as size,
           array_agg(distinct c.step_slug) as children
      from unnest(v_claims) c
      join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
      join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
     where c.step_type = 'map' and c.deps_count = 1
     group by c.run_id, d.dep_slug
  loop
    if v_parent.size <= claim_tasks.inline_array_limit then
      v_sent_runs := v_sent_runs || v_parent.run_id;
      v_sent_steps := v_sent_steps || v_parent.dep_slug;
      return query
      select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
             null::text[], ps.output::text
        from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
    else
      -- `|| '[]'` makes one decompressed copy; element lookups on the stored (compressed)
      -- value would decompress the whole array for every element
      select ps.output || '[]'::jsonb into v_array from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
      v_claims := array(
        select row(c.msg_id, c.run_id, c.step_slug, c.task_index, c.attempt, c.step_type, c.deps_count,
                   case when c.run_id = v_parent.run_id and c.step_slug = any (v_parent.children)
                        then coalesce((v_array -> c.task_index)::text, 'null')
                        else c.payload end)::pgflow._claim_item
          from unnest(v_claims) with ordinality as c
         order by c.ordinality);
    end if;
  end loop;

  return query
  with step_deps as (
    select s.step_slug,
           coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
                      where d.flow_slug = v_slug and d.step_slug = s.step_slug), '{}'::text[]) as deps
      from pgflow.steps s
     where s.flow_slug = v_slug
  )
  select 'task'::text, c.msg_id, c.run_id::text, c.step_slug, c.task_index, c.attempt,
         case when c.payload is not null then 3
              when c.step_type = 'map' then 2
              when c.deps_count = 0 then 0
              else 1 end,
         sd.deps,
         c.payload
    from unnest(v_claims) c
    join step_deps sd on sd.step_slug = c.step_slug
   order by c.msg_id;

  -- the run input, once per run, for root steps
  return query
  select 'blob'::text, null::bigint, r.run_id::text, ''::text, null::int, null::int, null::int,
         null::text[], r.input::text
    from pgflow.runs r
   where r.run_id in (select c.run_id from unnest(v_claims) c where c.deps_count = 0);

  -- dependency outputs of dependent single steps, once per (run, dependency) and call
  return query
  select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
         null::text[], ps.output::text
    from pgflow.step_states ps
   where ps.status = 'completed'
     and (ps.run_id, ps.step_slug) in (
       select distinct c.run_id, d.dep_slug
         from unnest(v_claims) c
         join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
        where c.step_type = 'single' and c.deps_count > 0)
     and not exists (
       select 1 from unnest(v_sent_runs, v_sent_steps) as sent(run_id, step_slug)
        where sent.run_id = ps.run_id and sent.step_slug = ps.step_slug);
end;
$$;
-- Locks the run, the task and its step in the usual order for a reported result, and tells
-- whether the result may be applied: only to a started task of a started step of a started run,
-- and, when the result names its attempt, only while that attempt is the task's current one.
-- A late or duplicate result changes nothing but archiving its message; a task waiting for its
-- retry keeps its message, and so does a task that another claim has started again (a stale
-- result of an earlier attempt). Returns the run's flow slug when the result applies, else NULL.
create or replace function pgflow._lock_reported_task(
  p_run_id uuid, p_step_slug text, p_task_index int, p_attempt int
)
returns text
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
begin
  select r.* into v_run from pgflow.runs r where r.run_id = p_run_id for update;
  if v_run.run_id is null then
    return null;
  end if;
  select t.* into v_task from pgflow.step_tasks t
   where t.run_id = p_run_id and t.step_slug = p_step_slug and t.task_index = p_task_index
  for update;
  if v_task.run_id is null then
    return null;
  end if;
  if p_attempt is not null and p_attempt <> v_task.attempts_count then
    return null;  -- the task was claimed again since; the current attempt decides
  end if;
  select ss.* into v_state from pgflow.step_states ss
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug
  for update;

  if v_run.status = 'started' and v_state.status = 'started' and v_task.status = 'started' then
    return v_run.flow_slug;
  end if;
  if v_task.status <> 'queued' or v_run.status <> 'started' or v_state.status <> 'started' then
    perform pgflow._archive_messages(v_run.flow_slug, array[v_task.message_id]);
  end if;
  return null;
end;
$$;
-- Our form: attempt is the attempt number the claim returned; a result for an attempt that is
-- no longer current changes nothing (NULL: any attempt, as in the contract's form).
create or replace function pgflow.complete_task(
  run_id uuid, step_slug text, task_index int, output jsonb, attempt int
)
returns setof pgflow.step_tasks
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_step pgflow.steps;
  v_error text;
begin
  if pgflow._lock_reported_task(complete_task.run_id, complete_task.step_slug, complete_task.task_index,
                                complete_task.attempt) is null then
    return;  -- a late, duplicate or foreign result
  end if;
  select r.* into v_run from pgflow.runs r where r.run_id = complete_task.run_id;
  select t.* into v_task from pgflow.step_tasks t
   where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index;

  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_run.flow_slug and s.step_slug = complete_task.step_slug;

  if v_step.step_type = 'single'
     and jsonb_typeof(complete_task.output) is distinct from 'array'
     and exists (
       select 1 from pgflow.deps d
         join pgflow.steps cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
         join pgflow.step_states css on css.run_id = complete_task.run_id and css.step_slug = d.step_slug
        where d.flow_slug = v_run.flow_slug and d.dep_slug = complete_task.step_slug
          and cs.step_type = 'map' and css.initial_tasks is null) then
    v_error := format('[TYPE_VIOLATION] Produced %s instead of array',
                      coalesce(jsonb_typeof(complete_task.output), 'null'));
    update pgflow.step_tasks t
       set status = 'failed', failed_at = now(), error_message = v_error, output = complete_task.output
     where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index;
    perform pgflow._archive_messages(v_run.flow_slug, array[v_task.message_id]);
    perform pgflow._fail_step(complete_task.run_id, complete_task.step_slug, v_error);
    return query select t.* from pgflow.step_tasks t
      where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
        and t.task_index = complete_task.task_index;
    return;
  end if;

  update pgflow.step_tasks t
     set status = 'completed', completed_at = now(), output = complete_task.output
   where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index;
  perform pgflow._archive_messages(v_run.flow_slug, array[v_task.message_id]);

  update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - 1
   where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
  returning ss.* into v_state;

  if v_state.remaining_tasks = 0 then
    update pgflow.step_states ss
       set status = 'completed', completed_at = now(),
           output = case
             when v_step.step_type = 'map' then (
               select jsonb_agg(t.output order by t.task_index)
                 from pgflow.step_tasks t
                where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
             else complete_task.output end
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
    perform pgflow._after_step_completed(complete_task.run_id, complete_task.step_slug);
    perform pgflow._advance_run(complete_task.run_id);
  end if;

  return query select t.* from pgflow.step_tasks t
    where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
      and t.task_index = complete_task.task_index;
end;
$$;

-- The contract's form: the result applies to whichever attempt is current.
create or replace function pgflow.complete_task(run_id uuid, step_slug text, task_index int, output jsonb)
returns setof pgflow.step_tasks
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  select * from pgflow.complete_task(complete_task.run_id, complete_task.step_slug,
                                     complete_task.task_index, complete_task.output, null::int);
$$;
-- A task whose attempts are used up: the step's when_exhausted decides what happens next.
create or replace function pgflow._task_exhausted(
  p_run_id uuid, p_step_slug text, p_task_index int, p_error_message text
)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_msg bigint;
  v_mode text;
begin
  update pgflow.step_tasks t
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where t.run_id = p_run_id and t.step_slug = p_step_slug and t.task_index = p_task_index
  returning t.flow_slug, t.message_id into v_flow, v_msg;
  perform pgflow._archive_messages(v_flow, array[v_msg]);

  select s.when_exhausted into v_mode from pgflow.steps s
   where s.flow_slug = v_flow and s.step_slug = p_step_slug;
  if v_mode = 'skip' then
    perform pgflow._skip_steps(p_run_id, array[p_step_slug], array['handler_failed']);
    perform pgflow._advance_run(p_run_id);
  elsif v_mode = 'skip-cascade' then
    perform pgflow._cascade_force_skip_steps(p_run_id, p_step_slug, 'handler_failed');
    perform pgflow._advance_run(p_run_id);
  else
    perform pgflow._fail_step(p_run_id, p_step_slug, p_error_message);
  end if;
end;
$$;
-- Our form: see complete_task.
create or replace function pgflow.fail_task(
  run_id uuid, step_slug text, task_index int, error_message text, attempt int
)
returns setof pgflow.step_tasks
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
  v_task pgflow.step_tasks;
  v_max_attempts int;
  v_base_delay int;
begin
  if pgflow._lock_reported_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                fail_task.attempt) is null then
    return;  -- a late, duplicate or foreign result
  end if;
  select r.* into v_run from pgflow.runs r where r.run_id = fail_task.run_id;
  select t.* into v_task from pgflow.step_tasks t
   where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
     and t.task_index = fail_task.task_index;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay)
    into v_max_attempts, v_base_delay
    from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_run.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts then
    update pgflow.step_tasks t
       set status = 'queued', error_message = fail_task.error_message, queued_at = now()
     where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    perform pgflow.set_vt_batch(
      v_run.flow_slug, array[v_task.message_id],
      array[pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count)]);
  else
    perform pgflow._task_exhausted(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                   fail_task.error_message);
  end if;

  return query select t.* from pgflow.step_tasks t
    where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
      and t.task_index = fail_task.task_index;
end;
$$;

-- The contract's form: the failure applies to whichever attempt is current.
create or replace function pgflow.fail_task(run_id uuid, step_slug text, task_index int, error_message text)
returns setof pgflow.step_tasks
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  select * from pgflow.fail_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                 fail_task.error_message, null::int);
$$;
-- Batched worker call (our addition, contract section 9).
--
-- Reports many results in one transaction. Item i is a completion with outputs[i] when
-- error_messages[i] is NULL, otherwise a failure with that message. attempts[i], when given, is
-- the attempt the result answers (the attempt number the claim returned): a result for an
-- attempt that is no longer current (the task was requeued and claimed again meanwhile) changes
-- nothing. The outcome is the same as calling complete_task / fail_task for each item in order;
-- most of the work is done set by set:
--   * a run whose items are all completions of running tasks is completed set-based: tasks,
--     step counters, step outputs, dependents, newly ready steps and finished runs, with one
--     statement each for the whole batch. This is exact: nothing but a type violation or a
--     condition with when_unmet 'fail' could end such a run halfway through its items, and runs
--     where either could happen are left to the per-task path;
--   * for other runs, the completions that only count a map step down and come before anything
--     else of their run are applied set-based, the rest with complete_task / fail_task in order.
-- Late, duplicate, stale and foreign items are ignored one by one. Returns the number of items
-- that took effect.
create or replace function pgflow.report_tasks(
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null
)
returns int
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_n int := coalesce(cardinality(report_tasks.run_ids), 0);
  v_applied int := 0;
  v_done int;
  v_items pgflow._report_item[];
  v_steps pgflow._report_step[];
  v_item record;
  v_flow_msgs record;
  v_events boolean := pgflow._events_enabled();
  v_state record;
  v_runs uuid[];
  v_general uuid[];
  v_run uuid;
begin
  if coalesce(cardinality(report_tasks.step_slugs), 0) <> v_n
     or coalesce(cardinality(report_tasks.task_indexes), 0) <> v_n
     or (report_tasks.outputs is not null and jsonb_typeof(report_tasks.outputs) <> 'array')
     or coalesce(jsonb_array_length(coalesce(report_tasks.outputs, '[]')), 0) not in (0, v_n)
     or (report_tasks.error_messages is not null and cardinality(report_tasks.error_messages) <> v_n)
     or (report_tasks.attempts is not null and cardinality(report_tasks.attempts) <> v_n) then
    raise exception 'report_tasks: run_ids, step_slugs, task_indexes, outputs (a JSON array), '
      'error_messages and attempts must all have one element per item (% items)', v_n
      using errcode = '22023';
  end if;
  if v_n = 0 then
    return 0;
  end if;
  if v_n = 1 then
    -- one result (a chain of steps, say): the per-task function does the same work with less
    -- set-up, which keeps the latency of a hop low
    if report_tasks.error_messages is null or report_tasks.error_messages[1] is null then
      perform 1 from pgflow.complete_task(report_tasks.run_ids[1], report_tasks.step_slugs[1],
        report_tasks.task_indexes[1], coalesce(report_tasks.outputs -> 0, 'null'::jsonb),
        report_tasks.attempts[1]);
    else
      perform 1 from pgflow.fail_task(report_tasks.run_ids[1], report_tasks.step_slugs[1],
        report_tasks.task_indexes[1], report_tasks.error_messages[1], report_tasks.attempts[1]);
    end if;
    return case when found then 1 else 0 end;
  end if;

  -- the usual lock order, and always the same order between concurrent batches
  perform 1 from pgflow.runs r
   where r.run_id in (select distinct x from unnest(report_tasks.run_ids) x)
   order by r.run_id
  for update;

  with items as (
    select i.ord::int as ord, i.run_id, i.step_slug, i.task_index,
           report_tasks.outputs -> (i.ord::int - 1) as output,
           report_tasks.error_messages[i.ord] as error_message,
           report_tasks.attempts[i.ord] as attempt
      from unnest(report_tasks.run_ids, report_tasks.step_slugs, report_tasks.task_indexes)
           with ordinality as i(run_id, step_slug, task_index, ord)
  ), facts as (
    select it.*, t.flow_slug, t.message_id, t.status as task_status, t.attempts_count,
           ss.status as step_status, ss.remaining_tasks, r.status as run_status, s.step_type,
           row_number() over (partition by it.run_id, it.step_slug, it.task_index order by it.ord) as dup_rank,
           row_number() over (partition by it.run_id, it.step_slug order by it.ord) as step_rank,
           -- a single step that feeds a map of unknown size must produce an array
           (s.step_type = 'single' and jsonb_typeof(it.output) is distinct from 'array' and exists (
              select 1 from pgflow.deps d
                join pgflow.steps cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
                join pgflow.step_states css on css.run_id = it.run_id and css.step_slug = d.step_slug
               where d.flow_slug = t.flow_slug and d.dep_slug = it.step_slug
                 and cs.step_type = 'map' and css.initial_tasks is null)) as may_violate,
           exists (select 1 from pgflow.steps fs where fs.flow_slug = t.flow_slug and fs.when_unmet = 'fail'
                     and (fs.required_input_pattern is not null or fs.forbidden_input_pattern is not null))
             as may_fail_condition
      from items it
      -- lookups by primary key, one per item (offset 0: see claim_tasks)
      left join lateral (
        select t.flow_slug, t.message_id, t.status, t.attempts_count from pgflow.step_tasks t
         where t.run_id = it.run_id and t.step_slug = it.step_slug and t.task_index = it.task_index
        offset 0
      ) t on true
      left join lateral (
        select ss.status, ss.remaining_tasks from pgflow.step_states ss
         where ss.run_id = it.run_id and ss.step_slug = it.step_slug
        offset 0
      ) ss on true
      left join pgflow.runs r on r.run_id = it.run_id
      left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = it.step_slug
  ), classified as (
    -- coalesce everywhere: an item whose task, step or run does not exist has NULL facts, and
    -- must count as not valid rather than be skipped by bool_and
    select f.*,
           coalesce(f.error_message is null and f.run_status = 'started' and f.step_status = 'started'
                    and f.task_status = 'started' and f.dup_rank = 1
                    and (f.attempt is null or f.attempt = f.attempts_count), false) as valid
      from facts f
  ), counted as (
    select c.*,
           coalesce(c.valid and c.step_type = 'map' and c.step_rank < c.remaining_tasks, false) as counts_down
      from classified c
  ), per_run as (
    select c.*,
           bool_and(c.valid and not coalesce(c.may_violate, true) and not coalesce(c.may_fail_condition, true))
             over (partition by c.run_id) as whole_run,
           min(case when not c.counts_down then c.ord end) over (partition by c.run_id) as first_other
      from counted c
  )
  select array_agg(row(p.ord, p.run_id, p.step_slug, p.task_index, p.output, p.error_message, p.flow_slug,
                       p.message_id,
                       coalesce(p.whole_run or (p.counts_down and p.ord < coalesce(p.first_other, 2147483647)),
                                false))::pgflow._report_item
                   order by p.ord)
    into v_items
    from per_run p;

  -- tasks
  update pgflow.step_tasks t
     set status = 'completed', completed_at = now(), output = coalesce(x.output, 'null'::jsonb)
    from unnest(v_items) x
   where x.bulk and t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index
     and t.flow_slug = x.flow_slug and t.message_id = x.message_id;
  get diagnostics v_applied = row_count;

  for v_flow_msgs in
    select x.flow_slug, array_agg(x.message_id) as ids from unnest(v_items) x
     where x.bulk and x.message_id is not null group by x.flow_slug
  loop
    perform pgflow._archive_messages(v_flow_msgs.flow_slug, v_flow_msgs.ids);
  end loop;

  -- step counters; the steps that reach zero complete
  with counted as (
    update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - g.n
      from (select x.run_id, x.step_slug, count(*)::int as n from unnest(v_items) x
             where x.bulk group by x.run_id, x.step_slug) g
     where ss.run_id = g.run_id and ss.step_slug = g.step_slug
    returning ss.run_id, ss.step_slug, ss.flow_slug, ss.remaining_tasks, ss.initial_tasks
  )
  select coalesce(array_agg(row(c.run_id, c.step_slug, c.flow_slug, s.step_type, c.initial_tasks)::pgflow._report_step),
                  '{}')
    into v_steps
    from counted c join pgflow.steps s on s.flow_slug = c.flow_slug and s.step_slug = c.step_slug
   where c.remaining_tasks = 0;
  v_done := cardinality(v_steps);

  if v_done > 0 then
    update pgflow.step_states ss
       set status = 'completed', completed_at = now(),
           output = case
             when d.step_type = 'map' then (
               select jsonb_agg(t.output order by t.task_index) from pgflow.step_tasks t
                where t.run_id = d.run_id and t.step_slug = d.step_slug)
             else (select t.output from pgflow.step_tasks t
                    where t.run_id = d.run_id and t.step_slug = d.step_slug and t.task_index = 0) end
      from unnest(v_steps) d
     where ss.run_id = d.run_id and ss.step_slug = d.step_slug;

    -- dependents lose one dependency per completed parent; a dependent map learns its size
    update pgflow.step_states child
       set remaining_deps = child.remaining_deps - e.n,
           initial_tasks = coalesce(child.initial_tasks, e.map_size)
      from (
        select d.run_id, dep.step_slug, count(*)::int as n,
               max(case when cs.step_type <> 'map' then null
                        when d.step_type = 'map' then d.initial_tasks
                        when jsonb_typeof(ps.output) = 'array' then jsonb_array_length(ps.output)
                        else 0 end) as map_size
          from unnest(v_steps) d
          join pgflow.deps dep on dep.flow_slug = d.flow_slug and dep.dep_slug = d.step_slug
          join pgflow.steps cs on cs.flow_slug = dep.flow_slug and cs.step_slug = dep.step_slug
          join pgflow.step_states ps on ps.run_id = d.run_id and ps.step_slug = d.step_slug
         group by d.run_id, dep.step_slug
      ) e
     where child.run_id = e.run_id and child.step_slug = e.step_slug and child.status = 'created';

    update pgflow.runs r set remaining_steps = r.remaining_steps - g.n
      from (select d.run_id, count(*)::int as n from unnest(v_steps) d group by d.run_id) g
     where r.run_id = g.run_id;

    if v_events then
      for v_state in
        select ss.run_id, ss.step_slug, ss.output, ss.completed_at
          from unnest(v_steps) d
          join pgflow.step_states ss on ss.run_id = d.run_id and ss.step_slug = d.step_slug
          join pgflow.steps s on s.flow_slug = d.flow_slug and s.step_slug = d.step_slug
         order by d.run_id, s.step_index
      loop
        perform pgflow._emit(v_state.run_id, 'step:' || v_state.step_slug || ':completed', jsonb_build_object(
          'event_type', 'step:completed',
          'run_id', v_state.run_id,
          'step_slug', v_state.step_slug,
          'status', 'completed',
          'output', v_state.output,
          'completed_at', v_state.completed_at));
      end loop;
    end if;

    -- move the runs on: set by set where no ready step needs a condition check or has no tasks
    select array_agg(distinct d.run_id) into v_runs from unnest(v_steps) d;
    select array_agg(distinct ss.run_id) into v_general
      from pgflow.step_states ss
      join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
     where ss.run_id = any (v_runs) and ss.status = 'created' and ss.remaining_deps = 0
       and (ss.initial_tasks = 0 or s.required_input_pattern is not null
            or s.forbidden_input_pattern is not null);
    v_general := coalesce(v_general, '{}');
    foreach v_run in array v_general loop
      perform pgflow._advance_run(v_run);
    end loop;
    perform pgflow._advance_runs_bulk(
      array(select r from unnest(v_runs) r where not (r = any (v_general))), v_events);
  end if;

  for v_item in select x.* from unnest(v_items) x where not x.bulk order by x.ord loop
    if v_item.error_message is null then
      perform 1 from pgflow.complete_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                          coalesce(v_item.output, 'null'::jsonb),
                                          report_tasks.attempts[v_item.ord]);
    else
      perform 1 from pgflow.fail_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                      v_item.error_message, report_tasks.attempts[v_item.ord]);
    end if;
    if found then
      v_applied := v_applied + 1;
    end if;
  end loop;
  return v_applied;
end;
$$;
create or replace function pgflow.register_worker(worker_id uuid, queue_name text, function_name text)
returns pgflow.workers
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  insert into pgflow.workers (worker_id, queue_name, function_name)
  values (register_worker.worker_id, register_worker.queue_name, register_worker.function_name)
  on conflict (worker_id) do update
    set last_heartbeat_at = now(), stopped_at = null
  returning *;
$$;
-- Records a heartbeat; returns true when an operator has deprecated the worker (it should then
-- finish its in-flight tasks and exit).
create or replace function pgflow.send_heartbeat(worker_id uuid)
returns boolean
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.workers w set last_heartbeat_at = now()
   where w.worker_id = send_heartbeat.worker_id
  returning w.deprecated_at is not null;
$$;
create or replace function pgflow.mark_worker_stopped(worker_id uuid)
returns void
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.workers w set stopped_at = now(), last_heartbeat_at = now()
   where w.worker_id = mark_worker_stopped.worker_id and w.stopped_at is null;
$$;
-- A task still started longer than its step's timeout + 30 s is taken to belong to a dead
-- worker: it goes back to the queue with its message visible at once. A task that has already
-- been requeued 3 times is marked permanently stalled and fails like a task whose attempts are
-- used up, so its run cannot hang forever. Returns the number of tasks requeued or terminalized.
create or replace function pgflow.requeue_stalled_tasks()
returns int
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_task record;
  v_count int := 0;
  v_current pgflow.step_tasks;
begin
  for v_task in
    select t.run_id, t.step_slug, t.task_index, t.flow_slug, t.message_id, t.requeued_count,
           coalesce(s.opt_timeout, f.opt_timeout) as timeout
      from pgflow.step_tasks t
      join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.started_at < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
  loop
    -- lock in the usual order (run, then task) and look again: it may have finished meanwhile
    perform 1 from pgflow.runs r where r.run_id = v_task.run_id for update;
    select t.* into v_current from pgflow.step_tasks t
     where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index
    for update;
    continue when v_current.status <> 'started'
      or v_current.started_at >= now() - make_interval(secs => v_task.timeout + 30);

    if v_current.requeued_count >= 3 then
      update pgflow.step_tasks t set permanently_stalled_at = now()
       where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index;
      perform pgflow._task_exhausted(v_task.run_id, v_task.step_slug, v_task.task_index,
        format('Task stalled: it was started %s times and no worker finished it within its timeout of %s s',
               v_current.requeued_count + 1, v_task.timeout));
    else
      update pgflow.step_tasks t
         set status = 'queued', requeued_count = t.requeued_count + 1, last_requeued_at = now(),
             queued_at = now()
       where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index;
      perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[0]);
      perform pgflow._notify_tasks(v_task.flow_slug);
    end if;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
-- Deletes finished runs (with their step states and tasks), stopped workers and archived
-- messages older than the interval. Returns what it deleted, per kind.
create or replace function pgflow.prune_data_older_than(retention_interval interval)
returns jsonb
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_tasks int;
  v_states int;
  v_workers int;
  v_messages bigint := 0;
  v_n bigint;
  v_queue text;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception 'retention_interval must be a non-negative interval, got %',
      coalesce(retention_interval::text, 'NULL') using errcode = '22023';
  end if;
  v_cutoff := now() - retention_interval;

  select array_agg(r.run_id) into v_runs from pgflow.runs r
   where r.status <> 'started' and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < v_cutoff;
  v_runs := coalesce(v_runs, '{}');

  delete from pgflow.step_tasks t where t.run_id = any (v_runs);
  get diagnostics v_tasks = row_count;
  delete from pgflow.step_states ss where ss.run_id = any (v_runs);
  get diagnostics v_states = row_count;
  delete from pgflow.runs r where r.run_id = any (v_runs);

  delete from pgflow.workers w where w.stopped_at is not null and w.stopped_at < v_cutoff;
  get diagnostics v_workers = row_count;

  for v_queue in select f.flow_slug from pgflow.flows f loop
    continue when to_regclass(format('pgmq.%I', pgmq.format_table_name(v_queue, 'a'))) is null;
    execute format('delete from pgmq.%I where archived_at < $1', pgmq.format_table_name(v_queue, 'a'))
      using v_cutoff;
    get diagnostics v_n = row_count;
    v_messages := v_messages + v_n;
  end loop;

  return jsonb_build_object('runs', cardinality(v_runs), 'step_states', v_states, 'step_tasks', v_tasks,
                            'workers', v_workers, 'archived_messages', v_messages);
end;
$$;
-- Roles (our addition): pgflow_worker runs tasks, pgflow_client starts and watches runs. What
-- each may do is in 0910_grants.sql. Grant a role to a login:
-- `grant pgflow_worker to my_worker_login;`.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    create role pgflow_worker nologin;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    create role pgflow_client nologin;
  end if;
exception
  when insufficient_privilege then
    raise notice 'pgflow: roles pgflow_worker and pgflow_client not created (no CREATEROLE right); '
      'create them and run the grants of schema file 0910_grants.sql by hand to use them';
  when unique_violation then
    null;  -- another database's migration created them at the same moment
end;
$$;
-- Both roles get only EXECUTE on the functions they call and SELECT on pgflow's tables; the
-- functions they call run with their owner's rights (`security definer` in each function's
-- file), so neither role can write a table directly. Neither gets any right on pgmq's tables; nothing is granted to
-- PUBLIC. Destroying a flow's data (ensure_flow_compiled with allow_data_loss,
-- delete_flow_and_data) takes the owner.
--
-- The revokes and the grants `on all tables` reach only the objects that exist when they run, so
-- this file comes after every table and function, and a migration that adds a function must
-- revoke it from PUBLIC itself (per-schema default privileges cannot take a right away; the
-- roles test fails on any pgflow function PUBLIC may execute).

revoke all on all functions in schema pgflow from public;
revoke all on all tables in schema pgflow from public;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant usage on schema pgflow to %I', v_role);
    execute format('grant select on all tables in schema pgflow to %I', v_role);
    execute format('grant execute on function pgflow.is_valid_slug(text) to %I', v_role);
    execute format('grant execute on function pgflow.calculate_retry_delay(numeric, int, int) to %I', v_role);
    execute format('grant execute on function pgflow.start_flow(text, jsonb, uuid) to %I', v_role);
    execute format('grant execute on function pgflow.start_flow_with_states(text, jsonb, uuid) to %I', v_role);
    execute format('grant execute on function pgflow.get_run_with_states(uuid) to %I', v_role);
    execute format('grant execute on function pgflow.ensure_flow_compiled(text, jsonb, boolean) to %I', v_role);
  end loop;

  if exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    grant execute on function pgflow.cancel_run(uuid) to pgflow_client;
  end if;

  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.start_tasks(text, bigint[], uuid) to pgflow_worker;
    grant execute on function pgflow.read_with_poll(text, int, int, int, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb, int) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text, int) to pgflow_worker;
    grant execute on function pgflow.claim_tasks(text, uuid, int, int) to pgflow_worker;
    grant execute on function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[]) to pgflow_worker;
    grant execute on function pgflow.register_worker(uuid, text, text) to pgflow_worker;
    grant execute on function pgflow.send_heartbeat(uuid) to pgflow_worker;
    grant execute on function pgflow.mark_worker_stopped(uuid) to pgflow_worker;
    grant execute on function pgflow.requeue_stalled_tasks() to pgflow_worker;
  end if;
end;
$$;
