-- pgflow 0.14.1 parity: constraint names, messages and behaviour of the SQL functions, and pgmq
-- 1.5.1 support (nothing here reads or writes last_read_at, which pgmq 1.5.1 lacks).

-- Constraints take pgflow's names, so callers that match them keep working.

alter table pgflow.flows rename constraint flows_slug_is_valid to slug_is_valid;
alter table pgflow.flows rename constraint flows_slug_fits_queue_name to slug_length_fits_queue_name;
alter table pgflow.flows rename constraint flows_opt_max_attempts_nonnegative to opt_max_attempts_is_nonnegative;
alter table pgflow.flows rename constraint flows_opt_base_delay_nonnegative to opt_base_delay_is_nonnegative;
alter table pgflow.flows rename constraint flows_opt_timeout_positive to opt_timeout_is_positive;
alter table pgflow.steps rename constraint steps_step_index_key to steps_flow_slug_step_index_key;
alter table pgflow.steps rename constraint steps_slug_is_valid to steps_step_slug_check;
alter table pgflow.steps rename constraint steps_step_type_is_valid to steps_step_type_check;
alter table pgflow.steps rename constraint steps_deps_count_nonnegative to steps_deps_count_check;
alter table pgflow.steps rename constraint steps_map_has_at_most_one_dep to map_has_at_most_one_dependency;
alter table pgflow.steps rename constraint steps_opt_max_attempts_nonnegative to opt_max_attempts_is_nonnegative;
alter table pgflow.steps rename constraint steps_opt_base_delay_nonnegative to opt_base_delay_is_nonnegative;
alter table pgflow.steps rename constraint steps_opt_timeout_positive to opt_timeout_is_positive;
alter table pgflow.steps rename constraint steps_opt_start_delay_nonnegative to opt_start_delay_is_nonnegative;
alter table pgflow.steps rename constraint steps_required_pattern_is_object to required_input_pattern_is_object;
alter table pgflow.steps rename constraint steps_forbidden_pattern_is_object to forbidden_input_pattern_is_object;
alter table pgflow.steps rename constraint steps_when_unmet_is_valid to when_unmet_is_valid;
alter table pgflow.steps rename constraint steps_when_exhausted_is_valid to when_exhausted_is_valid;
alter table pgflow.deps rename constraint deps_no_self_dependency to deps_check;
alter table pgflow.runs rename constraint runs_status_is_valid to status_is_valid;
alter table pgflow.runs rename constraint runs_remaining_steps_nonnegative to runs_remaining_steps_check;
alter table pgflow.runs rename constraint runs_single_terminal_timestamp to completed_at_or_failed_at;
alter table pgflow.runs rename constraint runs_completed_after_start to completed_at_is_after_started_at;
alter table pgflow.runs rename constraint runs_failed_after_start to failed_at_is_after_started_at;
alter table pgflow.runs rename constraint runs_cancelled_after_start to cancelled_at_is_after_started_at;
alter table pgflow.step_states rename constraint step_states_status_is_valid to status_is_valid;
alter table pgflow.step_states rename constraint step_states_remaining_tasks_nonnegative to remaining_tasks_is_nonnegative;
alter table pgflow.step_states rename constraint step_states_initial_tasks_nonnegative to step_states_initial_tasks_check;
alter table pgflow.step_states rename constraint step_states_remaining_deps_nonnegative to step_states_remaining_deps_check;
alter table pgflow.step_states rename constraint step_states_remaining_tasks_null_until_started to remaining_tasks_state_consistency;
alter table pgflow.step_states rename constraint step_states_initial_tasks_known_when_started to initial_tasks_known_when_started;
alter table pgflow.step_states rename constraint step_states_completed_has_no_remaining_tasks to status_and_remaining_tasks_match;
alter table pgflow.step_states rename constraint step_states_output_only_when_completed to output_only_for_completed_or_null;
alter table pgflow.step_states rename constraint step_states_skip_reason_iff_skipped to skip_reason_matches_status;
alter table pgflow.step_states rename constraint step_states_skip_reason_is_valid to skip_reason_is_valid;
alter table pgflow.step_states rename constraint step_states_single_terminal_timestamp to completed_at_or_failed_at_or_skipped_at;
alter table pgflow.step_states rename constraint step_states_started_after_created to started_at_is_after_created_at;
alter table pgflow.step_states rename constraint step_states_completed_after_start to completed_at_is_after_started_at;
alter table pgflow.step_states rename constraint step_states_failed_after_start to failed_at_is_after_started_at;
alter table pgflow.step_states rename constraint step_states_skipped_after_created to skipped_at_is_after_created_at;
alter table pgflow.step_tasks rename constraint step_tasks_status_is_valid to valid_status;
alter table pgflow.step_tasks rename constraint step_tasks_task_index_nonnegative to task_index_is_nonnegative;
alter table pgflow.step_tasks rename constraint step_tasks_attempts_nonnegative to attempts_count_nonnegative;
alter table pgflow.step_tasks rename constraint step_tasks_requeued_nonnegative to requeued_count_is_nonnegative;
alter table pgflow.step_tasks rename constraint step_tasks_output_only_when_finished to output_valid_only_for_completed;

-- Tasks: the timestamp rules pgflow has. A task back in the queue (retried or requeued) no
-- longer keeps the start of its earlier attempt.
update pgflow.step_tasks set started_at = null where status = 'queued' and started_at is not null;
alter table pgflow.step_tasks
  add constraint completed_at_or_failed_at check (num_nonnulls(completed_at, failed_at) <= 1),
  add constraint started_at_is_after_queued_at check (started_at is null or started_at >= queued_at),
  add constraint completed_at_is_after_queued_at check (completed_at is null or completed_at >= queued_at),
  add constraint failed_at_is_after_queued_at check (failed_at is null or failed_at >= queued_at),
  add constraint completed_at_is_after_started_at
    check (completed_at is null or started_at is null or completed_at >= started_at),
  add constraint failed_at_is_after_started_at
    check (failed_at is null or started_at is null or failed_at >= started_at);
create index step_tasks_stalled_idx on pgflow.step_tasks (permanently_stalled_at)
  where permanently_stalled_at is not null;

-- Definitions no longer pre-validate (the constraints raise, as in pgflow).
drop function pgflow._check_option(text, text, int, int);
drop function pgflow._check_slug(text, text);
drop function pgflow._normalize_step_shape(jsonb);
-- New signatures: set_vt_batch returns the columns every pgmq since 1.5 has; _skip_steps keeps
-- the error of a handler that failed.
drop function pgflow.set_vt_batch(text, bigint[], int[]);
drop function pgflow._skip_steps(uuid, text[], text[]);

-- Creates a flow and its queue; an existing flow is returned unchanged. Like pgflow, bad values
-- are left to the table's constraints (slug_is_valid, opt_*), so callers see the same errors.
-- Two checks are ours, because a flow slug is also its pgmq queue name: at most 47 characters,
-- and no flow that differs only by letter case (pgmq lowercases queue names).
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
begin
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if found then
    return v_flow;
  end if;

  if pgflow.is_valid_slug(v_slug) and length(v_slug) > 47 then
    raise exception 'flow slug % is % characters long; a flow slug is also its pgmq queue name, '
      'which may have at most 47 characters: choose a shorter slug', quote_literal(v_slug), length(v_slug)
      using errcode = '22023';
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

-- Appends a step with the next step_index, and its edges; an existing step is returned
-- unchanged. Like pgflow, only a map step's dependency count is checked here (first, with
-- pgflow's message); every other bad value is left to the tables' constraints, so callers see
-- the same errors: steps_flow_slug_fkey (unknown flow), steps_step_slug_check, steps_step_type_check,
-- the opt_*, *_input_pattern_is_object and when_*_is_valid checks, deps_check (a step that
-- depends on itself), deps_flow_slug_dep_slug_fkey (unknown dependency) and
-- steps_flow_slug_step_index_key. One check is ours: a dependency listed twice would count twice
-- in deps_count and leave the step waiting forever, so it is refused.
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
  v_dup text;
begin
  if coalesce(add_step.step_type, 'single') = 'map' and cardinality(v_deps) > 1 then
    raise exception 'Map step "%" can have at most one dependency, but % were provided: %',
      v_step_slug, cardinality(v_deps), array_to_string(v_deps, ', ');
  end if;
  select d into v_dup from unnest(v_deps) d group by d having count(*) > 1 limit 1;
  if found then
    raise exception 'step % of flow % lists dependency % more than once; list each dependency once',
      quote_literal(v_step_slug), quote_literal(v_flow_slug), quote_literal(v_dup)
      using errcode = '22023';
  end if;

  -- steps of one flow are appended one at a time (step_index is the count so far)
  perform 1 from pgflow.flows f where f.flow_slug = v_flow_slug for update;

  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_flow_slug and s.step_slug = v_step_slug;
  if found then
    return v_step;
  end if;

  insert into pgflow.steps (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted
  ) values (
    v_flow_slug, v_step_slug, coalesce(add_step.step_type, 'single'),
    (select count(*) from pgflow.steps s where s.flow_slug = v_flow_slug), cardinality(v_deps),
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

-- The differences between two shapes ("first" is p_local, "second" p_db), in pgflow's words, so
-- that tools matching them keep working: the step count, then per index a missing step, or the
-- slug, type, dependencies (sorted and joined), whenUnmet, whenExhausted and the two patterns
-- that differ. A text field absent on either side is not reported (as in pgflow); an absent
-- pattern prints as ''. Runtime options are not part of a shape's identity.
create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_diffs text[] := '{}';
  v_local jsonb := coalesce(p_local -> 'steps', '[]'::jsonb);
  v_db jsonb := coalesce(p_db -> 'steps', '[]'::jsonb);
  v_n_local int := jsonb_array_length(v_local);
  v_n_db int := jsonb_array_length(v_db);
  v_l jsonb;
  v_d jsonb;
  v_field text;
  v_label text;
  v_l_deps text;
  v_d_deps text;
begin
  if v_n_local <> v_n_db then
    v_diffs := v_diffs || format('Step count differs: %s vs %s', v_n_local, v_n_db);
  end if;

  for i in 0 .. greatest(v_n_local, v_n_db) - 1 loop
    v_l := v_local -> i;
    v_d := v_db -> i;
    if v_l is null then
      v_diffs := v_diffs || format('Step at index %s: missing in first shape (second has ''%s'')',
        i, v_d ->> 'slug');
      continue;
    elsif v_d is null then
      v_diffs := v_diffs || format('Step at index %s: missing in second shape (first has ''%s'')',
        i, v_l ->> 'slug');
      continue;
    end if;

    if v_l ->> 'slug' <> v_d ->> 'slug' then
      v_diffs := v_diffs || format('Step at index %s: slug differs ''%s'' vs ''%s''',
        i, v_l ->> 'slug', v_d ->> 'slug');
    end if;
    if v_l ->> 'stepType' <> v_d ->> 'stepType' then
      v_diffs := v_diffs || format('Step at index %s: type differs ''%s'' vs ''%s''',
        i, v_l ->> 'stepType', v_d ->> 'stepType');
    end if;

    select coalesce(string_agg(d, ', ' order by d), '') into v_l_deps
      from jsonb_array_elements_text(coalesce(v_l -> 'dependencies', '[]'::jsonb)) d;
    select coalesce(string_agg(d, ', ' order by d), '') into v_d_deps
      from jsonb_array_elements_text(coalesce(v_d -> 'dependencies', '[]'::jsonb)) d;
    if v_l_deps <> v_d_deps then
      v_diffs := v_diffs || format('Step at index %s: dependencies differ [%s] vs [%s]',
        i, v_l_deps, v_d_deps);
    end if;

    foreach v_field in array array['whenUnmet', 'whenExhausted'] loop
      if v_l ->> v_field <> v_d ->> v_field then
        v_diffs := v_diffs || format('Step at index %s: %s differs ''%s'' vs ''%s''',
          i, v_field, v_l ->> v_field, v_d ->> v_field);
      end if;
    end loop;
    foreach v_field in array array['requiredInputPattern', 'forbiddenInputPattern'] loop
      if v_l -> v_field is distinct from v_d -> v_field then
        v_diffs := v_diffs || format('Step at index %s: %s differs ''%s'' vs ''%s''',
          i, v_field, coalesce((v_l -> v_field)::text, ''), coalesce((v_d -> v_field)::text, ''));
      end if;
    end loop;
  end loop;
  return v_diffs;
end;
$$;

-- Runtime options are not part of a shape's identity; when a verified shape carries them, they
-- are applied, so a worker deploy can change retries and timeouts without data loss. Bad values
-- are left to the tables' constraints, as in create_flow and add_step.
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
  -- ours: a malformed shape gets a message that says what a shape is
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

-- Makes each message visible again after its own offset (seconds from now). NULL or empty
-- msg_ids, or NULL vt_offsets, change nothing; arrays of different lengths are an error. The
-- columns returned are those of every pgmq since 1.5 (later versions added last_read_at).
create or replace function pgflow.set_vt_batch(queue_name text, msg_ids bigint[], vt_offsets int[])
returns table (
  msg_id bigint,
  read_ct int,
  enqueued_at timestamptz,
  vt timestamptz,
  message jsonb,
  headers jsonb
)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(cardinality(set_vt_batch.msg_ids), 0) = 0 or set_vt_batch.vt_offsets is null then
    return;
  end if;
  if cardinality(set_vt_batch.msg_ids) <> cardinality(set_vt_batch.vt_offsets) then
    raise exception 'msg_ids length (%) must equal vt_offsets length (%)',
      cardinality(set_vt_batch.msg_ids), cardinality(set_vt_batch.vt_offsets);
  end if;
  return query execute format(
    'update pgmq.%I q set vt = clock_timestamp() + make_interval(secs => v.off)
       from unnest($1, $2) as v(id, off)
      where q.msg_id = v.id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers',
    pgmq.format_table_name(set_vt_batch.queue_name, 'q'))
  using set_vt_batch.msg_ids, set_vt_batch.vt_offsets;
end;
$$;

-- Marks the given steps skipped (reason per step), skips their open tasks, and takes them off
-- the run's remaining steps. Children outside the set lose one remaining dependency each; a
-- dependent map whose task count is still unknown learns that it has none. A step skipped
-- because its handler failed keeps p_error_message (the task's error), as in pgflow, and its
-- step:skipped event carries it.
create or replace function pgflow._skip_steps(
  p_run_id uuid, p_steps text[], p_reasons text[], p_error_message text default null
)
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
       set status = 'skipped', skip_reason = x.reason, skipped_at = now(), remaining_tasks = null,
           error_message = case when x.reason = 'handler_failed' then p_error_message end
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
    select ss.step_slug, ss.skip_reason, ss.skipped_at, ss.error_message
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
      'skipped_at', v_state.skipped_at)
      || case when v_state.error_message is not null
              then jsonb_build_object('error_message', v_state.error_message) else '{}'::jsonb end);
  end loop;
  return v_count;
end;
$$;

-- _cascade_force_skip_steps, with the error that made the step skip (a task out of attempts
-- under when_exhausted 'skip-cascade'), which the skipped step keeps.
create or replace function pgflow._skip_with_dependents(
  p_run_id uuid, p_step_slug text, p_skip_reason text, p_error_message text
)
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
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;
  if v_flow is null then
    raise exception 'Run not found: %', p_run_id;
  end if;

  with recursive dependents(slug) as (
    select p_step_slug
    union
    select d.step_slug from pgflow.deps d join dependents x on d.dep_slug = x.slug
     where d.flow_slug = v_flow
  )
  select array_agg(x.slug),
         array_agg(case when x.slug = p_step_slug then p_skip_reason else 'dependency_skipped' end)
    into v_steps, v_reasons
    from dependents x;

  return pgflow._skip_steps(p_run_id, v_steps, v_reasons, p_error_message);
end;
$$;

-- Skips a step and every step that depends on it, directly or not; the step gets skip_reason,
-- its dependents 'dependency_skipped'. Returns how many steps were skipped.
create or replace function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
returns int
language sql
volatile
set search_path = pg_catalog, pg_temp
as $$
  select pgflow._skip_with_dependents(_cascade_force_skip_steps.run_id,
    _cascade_force_skip_steps.step_slug, _cascade_force_skip_steps.skip_reason, null);
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
    'completed_at', v_state.completed_at)
    -- a taskless step (completed by the cascade) says more, as in pgflow
    || case when v_state.initial_tasks = 0 then jsonb_build_object(
         'started_at', v_state.started_at,
         'remaining_tasks', 0,
         'remaining_deps', 0) else '{}'::jsonb end);
end;
$$;

-- Completes, wave after wave, every ready step that has no tasks: a map over an empty array
-- outputs [], a single step NULL; it is started and completed at once (started_at and
-- completed_at both set, as in pgflow). Conditions of newly ready steps are resolved between waves,
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
         set status = 'completed', started_at = now(), completed_at = now(), remaining_tasks = 0,
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

create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := start_flow.flow_slug;
  v_run pgflow.runs;
  v_input_length int;
begin
  -- As in pgflow: a flow with root map steps needs an array; everything else is left to the
  -- runs table (an unknown flow violates runs_flow_slug_fkey, SQL NULL the input's not-null).
  if exists (select 1 from pgflow.steps s
              where s.flow_slug = v_slug and s.step_type = 'map' and s.deps_count = 0) then
    if start_flow.input is null then
      raise exception 'Flow % has root map steps but input is NULL', v_slug;
    end if;
    if jsonb_typeof(start_flow.input) <> 'array' then
      raise exception 'Flow % has root map steps but input is not an array (got %)',
        v_slug, jsonb_typeof(start_flow.input);
    end if;
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

-- Starts the queued tasks behind the given messages (of runs and steps still started) for a
-- worker, hides their messages for the step's timeout + 2 s, and returns each task's input. An
-- unknown worker violates step_tasks_last_worker_id_fkey, as in pgflow.
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
  with claimable as (
    -- one index lookup per message whatever the statistics say (offset 0 keeps the planner
    -- from reading every task of a large step and filtering on the message ids)
    select t.run_id, t.step_slug, t.task_index
      from unnest(start_tasks.msg_ids) as m(id)
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
       -- never before the task was queued: a claim whose transaction began before the retry
       -- that queued the task committed would otherwise date the start earlier
       set status = 'started', attempts_count = t.attempts_count + 1,
           started_at = greatest(now(), t.queued_at),
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
              read_ct = q.read_ct + 1
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
       -- never before the task was queued: a claim whose transaction began before the retry
       -- that queued the task committed would otherwise date the start earlier
       set status = 'started', attempts_count = t.attempts_count + 1,
           started_at = greatest(now(), t.queued_at),
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
    perform pgflow._skip_steps(p_run_id, array[p_step_slug], array['handler_failed'], p_error_message);
    perform pgflow._advance_run(p_run_id);
  elsif v_mode = 'skip-cascade' then
    perform pgflow._skip_with_dependents(p_run_id, p_step_slug, 'handler_failed', p_error_message);
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
       set status = 'queued', error_message = fail_task.error_message, queued_at = now(),
           started_at = null
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

-- A task still started longer than its step's timeout + 30 s is taken to belong to a dead
-- worker: it goes back to the queue with its message visible at once. A task that has already
-- been requeued 3 times is marked permanently stalled and fails like a task whose attempts are
-- used up, so its run cannot hang forever (its permanently_stalled_at tells it apart). As in
-- pgflow, a requeued task forgets its start and worker, and the result counts only the tasks
-- requeued; the worker that runs the sweep finds the terminalized ones by permanently_stalled_at.
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
      continue;
    else
      update pgflow.step_tasks t
         set status = 'queued', requeued_count = t.requeued_count + 1, last_requeued_at = now(),
             queued_at = now(), started_at = null, last_worker_id = null
       where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index;
      perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[0]);
      perform pgflow._notify_tasks(v_task.flow_slug);
    end if;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

-- Deletes what is older than the interval: finished runs with their step states, tasks and
-- any of their messages still in a flow's queue; workers whose last heartbeat is older (a
-- crashed worker never stops, and goes all the same; a live one registers again at its next
-- heartbeat); archived messages. Returns what it deleted, per kind (pgflow's returns nothing).
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
  v_flow_msgs record;
  v_queued bigint := 0;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception 'retention_interval must be a non-negative interval, got %',
      coalesce(retention_interval::text, 'NULL') using errcode = '22023';
  end if;
  v_cutoff := now() - retention_interval;

  select array_agg(r.run_id) into v_runs from pgflow.runs r
   where r.status <> 'started' and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < v_cutoff;
  v_runs := coalesce(v_runs, '{}');

  for v_flow_msgs in
    select t.flow_slug, array_agg(t.message_id) as ids from pgflow.step_tasks t
     where t.run_id = any (v_runs) and t.message_id is not null
     group by t.flow_slug
  loop
    select count(*) into v_n from pgmq.delete(v_flow_msgs.flow_slug, v_flow_msgs.ids);
    v_queued := v_queued + v_n;
  end loop;

  delete from pgflow.step_tasks t where t.run_id = any (v_runs);
  get diagnostics v_tasks = row_count;
  delete from pgflow.step_states ss where ss.run_id = any (v_runs);
  get diagnostics v_states = row_count;
  delete from pgflow.runs r where r.run_id = any (v_runs);

  delete from pgflow.workers w where w.last_heartbeat_at < v_cutoff;
  get diagnostics v_workers = row_count;

  for v_queue in select f.flow_slug from pgflow.flows f loop
    continue when to_regclass(format('pgmq.%I', pgmq.format_table_name(v_queue, 'a'))) is null;
    execute format('delete from pgmq.%I where archived_at < $1', pgmq.format_table_name(v_queue, 'a'))
      using v_cutoff;
    get diagnostics v_n = row_count;
    v_messages := v_messages + v_n;
  end loop;

  return jsonb_build_object('runs', cardinality(v_runs), 'step_states', v_states, 'step_tasks', v_tasks,
                            'workers', v_workers, 'queued_messages', v_queued,
                            'archived_messages', v_messages);
end;
$$;

-- Functions are created executable by PUBLIC; only the roles' grants may reach them.
revoke all on all functions in schema pgflow from public;
