-- One round trip per hop, and plans that are not made again at every call.
--
-- report_and_claim reports results and claims the tasks they made ready for the same worker;
-- claim_tasks shares its second half (_claim_messages) and the hiding of messages
-- (_hide_messages) with it, and runs simpler statements through EXECUTE (planned at every call);
-- _notify_tasks can defer wake-ups until the caller has claimed what it can; the functions of
-- the hot path use generic plans; messages are sent in one statement of ours (_send_messages)
-- rather than through pgmq's SQL-language send_batch, and _events_enabled is PL/pgSQL: SQL
-- functions that cannot be inlined are parsed and planned at every call.

-- Whether events must be built at all: for Supabase's realtime.send, or for our NOTIFY when the
-- database enables it (alter database ... set pgflow.events = 'on'). PL/pgSQL rather than SQL:
-- a SQL function with a SET clause is not inlined, and is parsed and planned at every call.
create or replace function pgflow._events_enabled()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null
      or coalesce(current_setting('pgflow.events', true), '') = 'on';
end;
$$;

-- Wakes workers of a flow when tasks become visible. Postgres folds identical notifications of a
-- transaction into one, so a fan-out of many tasks sends one notification.
--
-- The transaction-local setting pgflow.wakeups changes this: 'off' sends nothing; 'defer'
-- (set by report_and_claim) only notes the flow in pgflow.deferred_wakeups, so that the caller
-- can claim the new tasks itself first and wake other workers only for what it leaves.
create or replace function pgflow._notify_tasks(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_mode text := coalesce(current_setting('pgflow.wakeups', true), '');
begin
  if v_mode = 'off' then
    return;
  elsif v_mode = 'defer' then
    perform set_config('pgflow.deferred_wakeups',
                       coalesce(current_setting('pgflow.deferred_wakeups', true), '') || ',' || p_flow_slug,
                       true);
  else
    perform pg_notify('pgflow_tasks', p_flow_slug);
  end if;
end;
$$;

-- Sends messages to a flow's queue, visible after delay seconds, and returns their ids in the
-- order of the messages (ids come from the queue's identity sequence in insertion order, so the
-- n-th smallest id belongs to the n-th message). Writes the queue table the way pgmq.send_batch
-- does, in one statement: pgmq's send_batch goes through an SQL-language wrapper, which
-- Postgres parses and plans again at every call, and that cost is paid on every hop of a run.
create or replace function pgflow._send_messages(p_flow_slug text, p_messages jsonb[], p_delay int)
returns bigint[]
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
begin
  if p_messages is null or cardinality(p_messages) = 0 then
    return '{}';
  end if;
  execute format(
    'with sent as (
       insert into pgmq.%I (vt, message)
       select clock_timestamp() + make_interval(secs => $2), m.message
         from unnest($1) with ordinality as m(message, ord)
        order by m.ord
       returning msg_id
     )
     select array_agg(s.msg_id order by s.msg_id) from sent s',
    pgmq.format_table_name(p_flow_slug, 'q'))
  into v_ids
  using p_messages, coalesce(p_delay, 0);
  return v_ids;
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
    v_msg_ids := pgflow._send_messages(
      v_flow,
      array(
        select jsonb_build_object('flow_slug', v_flow, 'run_id', v_run_id,
                                  'step_slug', v_step.step_slug, 'task_index', i)
          from generate_series(0, v_step.initial_tasks - 1) i
         order by i),
      v_step.start_delay);

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
declare
  v_ready boolean;
  v_special boolean;
begin
  -- most calls find no step ready, or only steps with tasks and no condition: the cascade
  -- (conditions, steps without tasks) runs only when a ready step needs it
  select count(*) > 0, coalesce(bool_or(ss.initial_tasks = 0 or s.required_input_pattern is not null
                                        or s.forbidden_input_pattern is not null), false)
    into v_ready, v_special
    from pgflow.step_states ss
    join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
   where ss.run_id = p_run_id and ss.status = 'created' and ss.remaining_deps = 0;
  if v_special then
    perform pgflow.cascade_complete_taskless_steps(p_run_id);
  end if;
  if v_ready then
    perform pgflow.start_ready_steps(p_run_id);
  end if;
  perform pgflow.maybe_complete_run(p_run_id);
end;
$$;

-- it returns the locked task now (its return type cannot be replaced)
drop function pgflow._lock_reported_task(uuid, text, int, int);

-- Locks the run, the task and its step in the usual order for a reported result, and tells
-- whether the result may be applied: only to a started task of a started step of a started run,
-- and, when the result names its attempt, only while that attempt is the task's current one.
-- A late or duplicate result changes nothing but archiving its message; a task waiting for its
-- retry keeps its message, and so does a task that another claim has started again (a stale
-- result of an earlier attempt). Returns the task's row (as locked) when the result applies, else
-- NULL.
create or replace function pgflow._lock_reported_task(
  p_run_id uuid, p_step_slug text, p_task_index int, p_attempt int
)
returns pgflow.step_tasks
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
    return v_task;
  end if;
  if v_task.status <> 'queued' or v_run.status <> 'started' or v_state.status <> 'started' then
    perform pgflow._archive_messages(v_run.flow_slug, array[v_task.message_id]);
  end if;
  return null;
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
    v_ids := pgflow._send_messages(
      v_group.flow_slug,
      array(
        select jsonb_build_object('flow_slug', n.flow_slug, 'run_id', n.run_id,
                                  'step_slug', n.step_slug, 'task_index', i)
          from unnest(v_new) n, generate_series(0, n.initial_tasks - 1) i
         where n.flow_slug = v_group.flow_slug and n.start_delay = v_group.start_delay
         order by n.run_id, n.step_slug, i),
      v_group.start_delay);
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
set plan_cache_mode = force_generic_plan
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

create or replace function pgflow.start_flow_with_states(flow_slug text, input jsonb, run_id uuid default null)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
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

-- Starts the queued tasks behind the given messages (of runs and steps still started) for a
-- worker, hides their messages for the step's timeout + 2 s, and returns each task's input. An
-- unknown worker violates step_tasks_last_worker_id_fkey, as in pgflow.
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
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

-- Hides claimed messages from other readers for their step's timeout + 2 s (the flow's timeout
-- for a step without its own) and counts the read, as pgmq's read does. Only messages visible
-- now are hidden (a message sent with a delay stays where it is); returns their ids, in order.
create or replace function pgflow._hide_messages(
  p_flow_slug text,
  p_msg_ids bigint[],
  p_step_slugs text[],
  p_default_timeout int
)
returns bigint[]
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_group record;
  v_part bigint[];
  v_hidden bigint[] := '{}';
begin
  if p_msg_ids is null or cardinality(p_msg_ids) = 0 then
    return null;
  end if;
  -- one update per timeout (usually one for the whole batch): `msg_id = any (...)` is served by
  -- the queue's primary key whatever the planner thinks of the array's size, where a join with
  -- the array may scan the whole queue
  for v_group in
    select coalesce(s.opt_timeout, p_default_timeout) + 2 as secs, array_agg(m.msg_id) as ids
      from unnest(p_msg_ids, p_step_slugs) as m(msg_id, step_slug)
      left join pgflow.steps s on s.flow_slug = p_flow_slug and s.step_slug = m.step_slug
     group by 1
  loop
    -- statements run through EXECUTE are planned at every call: keep this one simple
    execute format(
      'with hidden as (
         update pgmq.%I q
            set vt = clock_timestamp() + make_interval(secs => $2), read_ct = q.read_ct + 1
          where q.msg_id = any ($1) and q.vt <= clock_timestamp()
         returning q.msg_id
       )
       select array_agg(h.msg_id) from hidden h',
      pgmq.format_table_name(p_flow_slug, 'q'))
    into v_part
    using v_group.ids, v_group.secs;
    v_hidden := v_hidden || coalesce(v_part, '{}');
  end loop;
  if cardinality(v_hidden) = 0 then
    return null;
  end if;
  return array(select x from unnest(v_hidden) x order by x);
end;
$$;

-- Starts the tasks of messages a claim has just read and hidden, and returns the rows of
-- claim_tasks (see there). Messages whose task can no longer run are archived. Called by
-- claim_tasks and report_and_claim only, with their owner's rights.
create or replace function pgflow._claim_messages(
  p_flow_slug text,
  p_worker_id uuid,
  p_msg_ids bigint[],
  p_inline_array_limit int
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
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := p_flow_slug;
  v_msg_ids bigint[] := p_msg_ids;
  v_dead bigint[];
  v_parent record;
  v_array jsonb;
  v_claims pgflow._claim_item[];
  v_sent_runs uuid[] := '{}';
  v_sent_steps text[] := '{}';
  v_has_maps boolean;
  v_has_roots boolean;
  v_has_deps boolean;
begin
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
           last_worker_id = p_worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.message_id, t.run_id, t.step_slug, t.task_index, t.attempts_count
  )
  -- what the batch holds decides which of the queries below are needed at all
  select coalesce(array_agg(row(c.message_id, c.run_id, c.step_slug, c.task_index, c.attempts_count,
                                s.step_type, s.deps_count, null)::pgflow._claim_item
                            order by c.message_id), '{}'),
         coalesce(bool_or(s.step_type = 'map' and s.deps_count = 1), false),
         coalesce(bool_or(s.deps_count = 0), false),
         coalesce(bool_or(s.step_type = 'single' and s.deps_count > 0), false)
    into v_claims, v_has_maps, v_has_roots, v_has_deps
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
     where v_has_maps and c.step_type = 'map' and c.deps_count = 1
     group by c.run_id, d.dep_slug
  loop
    if v_parent.size <= p_inline_array_limit then
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
    -- the dependencies of the steps claimed only (a flow may have many steps)
    select c.step_slug,
           coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
                      where d.flow_slug = v_slug and d.step_slug = c.step_slug), '{}'::text[]) as deps
      from (select distinct x.step_slug from unnest(v_claims) x) c
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
  if v_has_roots then
    return query
    select 'blob'::text, null::bigint, r.run_id::text, ''::text, null::int, null::int, null::int,
           null::text[], r.input::text
      from pgflow.runs r
     where r.run_id in (select c.run_id from unnest(v_claims) c where c.deps_count = 0);
  end if;

  -- dependency outputs of dependent single steps, once per (run, dependency) and call
  if v_has_deps then
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
  end if;
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
-- Messages whose task can no longer run (finished, cancelled, or gone) are archived. Starting
-- the tasks of the messages read is pgflow._claim_messages, shared with report_and_claim.
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
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := claim_tasks.flow_slug;
  v_flow pgflow.flows;
  v_msg_ids bigint[];
  v_steps text[];
begin
  if claim_tasks.qty is null or claim_tasks.qty < 1 then
    raise exception 'claim_tasks: qty must be 1 or more, got %', coalesce(claim_tasks.qty::text, 'NULL')
      using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  -- statements run through EXECUTE are planned at every call: keep them simple
  execute format(
    'select array_agg(p.msg_id order by p.msg_id), array_agg(p.message ->> ''step_slug'' order by p.msg_id)
       from (select q.msg_id, q.message from pgmq.%I q
              where q.vt <= clock_timestamp()
              order by q.msg_id
              limit $1
              for update skip locked) p',
    pgmq.format_table_name(v_slug, 'q'))
  into v_msg_ids, v_steps
  using claim_tasks.qty;

  v_msg_ids := pgflow._hide_messages(v_slug, v_msg_ids, v_steps, v_flow.opt_timeout);
  if v_msg_ids is null then
    return;
  end if;

  return query
  select * from pgflow._claim_messages(v_slug, claim_tasks.worker_id, v_msg_ids,
                                        claim_tasks.inline_array_limit);
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
set plan_cache_mode = force_generic_plan
as $$
declare
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_step pgflow.steps;
  v_error text;
begin
  v_task := pgflow._lock_reported_task(complete_task.run_id, complete_task.step_slug,
                                       complete_task.task_index, complete_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;
  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_task.flow_slug and s.step_slug = complete_task.step_slug;

  if v_step.step_type = 'single'
     and jsonb_typeof(complete_task.output) is distinct from 'array'
     and exists (
       select 1 from pgflow.deps d
         join pgflow.steps cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
         join pgflow.step_states css on css.run_id = complete_task.run_id and css.step_slug = d.step_slug
        where d.flow_slug = v_task.flow_slug and d.dep_slug = complete_task.step_slug
          and cs.step_type = 'map' and css.initial_tasks is null) then
    v_error := format('[TYPE_VIOLATION] Produced %s instead of array',
                      coalesce(jsonb_typeof(complete_task.output), 'null'));
    update pgflow.step_tasks t
       set status = 'failed', failed_at = now(), error_message = v_error, output = complete_task.output
     where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index;
    perform pgflow._archive_messages(v_task.flow_slug, array[v_task.message_id]);
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
  perform pgflow._archive_messages(v_task.flow_slug, array[v_task.message_id]);

  if v_step.step_type = 'single' then
    -- one task: the step completes with it, in one statement
    update pgflow.step_states ss
       set remaining_tasks = 0, status = 'completed', completed_at = now(), output = complete_task.output
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
    returning ss.* into v_state;
  else
    update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - 1
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
    returning ss.* into v_state;
    if v_state.remaining_tasks = 0 then
      update pgflow.step_states ss
         set status = 'completed', completed_at = now(),
             output = (select jsonb_agg(t.output order by t.task_index)
                         from pgflow.step_tasks t
                        where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
       where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
    end if;
  end if;

  if v_state.remaining_tasks = 0 then
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
set plan_cache_mode = force_generic_plan
as $$
  select * from pgflow.complete_task(complete_task.run_id, complete_task.step_slug,
                                     complete_task.task_index, complete_task.output, null::int);
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
set plan_cache_mode = force_generic_plan
as $$
declare
  v_task pgflow.step_tasks;
  v_max_attempts int;
  v_base_delay int;
begin
  v_task := pgflow._lock_reported_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                       fail_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay)
    into v_max_attempts, v_base_delay
    from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_task.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts then
    update pgflow.step_tasks t
       set status = 'queued', error_message = fail_task.error_message, queued_at = now(),
           started_at = null
     where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    perform pgflow.set_vt_batch(
      v_task.flow_slug, array[v_task.message_id],
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
set plan_cache_mode = force_generic_plan
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
set plan_cache_mode = force_generic_plan
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

-- Batched worker call (our addition): report results and take the tasks they made ready, in one
-- round trip and one transaction.
--
-- Does what report_tasks does with the same arguments, then claims, for worker_id, up to qty
-- tasks of flow_slug that this very transaction queued for the reported runs (the tasks of steps
-- it started, visible at once: not delayed by a start delay). They are claims in every respect,
-- exactly as claim_tasks makes them: attempt counted, message hidden for the step's timeout + 2 s,
-- rows in claim_tasks' shape. No other worker ever sees them queued. Other workers are woken
-- (NOTIFY) only for the tasks left over. Claims nothing when qty is 0 or the worker is not
-- registered (the report still happens).
create or replace function pgflow.report_and_claim(
  flow_slug text,
  worker_id uuid,
  qty int,
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null,
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
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := report_and_claim.flow_slug;
  v_flow pgflow.flows;
  v_wakeups text := current_setting('pgflow.wakeups', true);
  v_deferred text[];
  v_runs uuid[];
  v_msg_ids bigint[];
  v_steps text[];
  v_wake text;
begin
  if report_and_claim.qty is null or report_and_claim.qty < 0 then
    raise exception 'report_and_claim: qty must be 0 or more, got %',
      coalesce(report_and_claim.qty::text, 'NULL') using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    perform set_config('pgflow.wakeups', 'defer', true);
    perform set_config('pgflow.deferred_wakeups', '', true);
  end if;

  perform pgflow.report_tasks(report_and_claim.run_ids, report_and_claim.step_slugs,
                              report_and_claim.task_indexes, report_and_claim.outputs,
                              report_and_claim.error_messages, report_and_claim.attempts);

  select array_agg(distinct r) into v_runs from unnest(report_and_claim.run_ids) r;
  if report_and_claim.qty > 0 and v_runs is not null
     and exists (select 1 from pgflow.workers w where w.worker_id = report_and_claim.worker_id) then
    -- the tasks of the steps this transaction started (a step's started_at is its
    -- transaction's start), through the primary keys of the reported runs
    select array_agg(f.message_id order by f.message_id), array_agg(f.step_slug order by f.message_id)
      into v_msg_ids, v_steps
      from (
        select t.message_id, t.step_slug
          from pgflow.step_states ss
          join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
         where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
           and ss.started_at = now() and t.status = 'queued' and t.message_id is not null
         order by t.message_id
         limit report_and_claim.qty
      ) f;
    v_msg_ids := pgflow._hide_messages(v_slug, v_msg_ids, v_steps, v_flow.opt_timeout);
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    v_deferred := array(select distinct x from unnest(string_to_array(
      current_setting('pgflow.deferred_wakeups', true), ',')) x where x <> '');
    perform set_config('pgflow.wakeups', coalesce(v_wakeups, ''), true);
    perform set_config('pgflow.deferred_wakeups', '', true);
    foreach v_wake in array v_deferred loop
      -- wake the others only when something this transaction queued is still visible to them
      -- (when fewer tasks were hidden than asked for, the claim took all there were)
      if v_wake <> v_slug or (coalesce(cardinality(v_msg_ids), 0) >= report_and_claim.qty and exists (
           select 1 from pgflow.step_states ss
             join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
            where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
              and ss.started_at = now() and t.status = 'queued'
              and not (t.message_id = any (coalesce(v_msg_ids, '{}'))))) then
        perform pgflow._notify_tasks(v_wake);
      end if;
    end loop;
  end if;

  if v_msg_ids is null then
    return;
  end if;
  return query
  select * from pgflow._claim_messages(v_slug, report_and_claim.worker_id, v_msg_ids,
                                        report_and_claim.inline_array_limit);
end;
$$;

revoke all on all functions in schema pgflow from public;

do $$
begin
  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[], int)
      to pgflow_worker;
  end if;
end;
$$;
