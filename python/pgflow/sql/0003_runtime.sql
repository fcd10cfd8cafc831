-- Running flows: events, starting runs and steps, claiming, completing and failing tasks, the
-- cascades that skip or complete steps without tasks, and run completion and failure.
--
-- Lock order, everywhere: the run row first (for update), then step states, then tasks. Every
-- function that changes a run's counters takes the run lock, so per-run bookkeeping is serial
-- and deadlock-free.

------------------------------------------------------------------------------------------------
-- Events and wake-ups
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- Run and step terminal states
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- Completing steps and runs
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- Starting runs
------------------------------------------------------------------------------------------------
create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
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

------------------------------------------------------------------------------------------------
-- Claiming tasks
------------------------------------------------------------------------------------------------
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
volatile
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

------------------------------------------------------------------------------------------------
-- Completing and failing tasks
------------------------------------------------------------------------------------------------
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
set search_path = pg_catalog, pg_temp
as $$
  select * from pgflow.fail_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                 fail_task.error_message, null::int);
$$;
