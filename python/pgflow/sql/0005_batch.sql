-- Batched worker calls (our addition, contract section 9): claim many tasks in one round trip,
-- and report many results in one call and one transaction. The outcome is the same as calling
-- start_tasks / complete_task / fail_task one by one in the given order.

-- Scratch rows of the batched functions, held in arrays of these types (owned by the schema
-- owner) rather than in session temp tables, which a caller could create first.
create type pgflow._claim_item as (
  msg_id bigint, run_id uuid, step_slug text, task_index int, attempt int, step_type text,
  deps_count int, payload text
);
create type pgflow._report_item as (
  ord int, run_id uuid, step_slug text, task_index int, output jsonb, error_message text,
  flow_slug text, message_id bigint, bulk boolean
);
create type pgflow._report_step as (
  run_id uuid, step_slug text, flow_slug text, step_type text, initial_tasks int
);
create type pgflow._new_step as (
  flow_slug text, run_id uuid, step_slug text, initial_tasks int, remaining_deps int,
  started_at timestamptz, start_delay int, step_index int
);

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
