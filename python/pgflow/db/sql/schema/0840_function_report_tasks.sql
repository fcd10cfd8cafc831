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
-- that took effect. retry_modes[i], tracebacks[i] and outcomes[i], when given, are fail_task's
-- `retry`, `traceback` and `outcome` for a failure. Every item that takes effect ends its attempt
-- and records it in task_attempts (the set-based completions with one insert for the batch).
create or replace function pgflow.report_tasks(
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null,
  retry_modes text[] default null,
  tracebacks text[] default null,
  outcomes text[] default null
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
     or (report_tasks.attempts is not null and cardinality(report_tasks.attempts) <> v_n)
     or (report_tasks.retry_modes is not null and cardinality(report_tasks.retry_modes) <> v_n)
     or (report_tasks.tracebacks is not null and cardinality(report_tasks.tracebacks) <> v_n)
     or (report_tasks.outcomes is not null and cardinality(report_tasks.outcomes) <> v_n) then
    raise exception 'report_tasks: run_ids, step_slugs, task_indexes, outputs (a JSON array), '
      'error_messages, attempts, retry_modes, tracebacks and outcomes must all have one element '
      'per item (% items)', v_n
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
        report_tasks.task_indexes[1], report_tasks.error_messages[1], report_tasks.attempts[1],
        report_tasks.retry_modes[1], report_tasks.tracebacks[1], report_tasks.outcomes[1]);
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

  -- tasks, and their attempts ended (the update returns the attempt's start and worker, which a
  -- completion leaves as they are)
  with completed as (
    update pgflow.step_tasks t
       set status = 'completed', completed_at = now(), output = coalesce(x.output, 'null'::jsonb)
      from unnest(v_items) x
     where x.bulk and t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index
       and t.flow_slug = x.flow_slug and t.message_id = x.message_id
    returning t.run_id, t.step_slug, t.task_index, t.attempts_count, t.flow_slug, t.last_worker_id,
              t.started_at
  )
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome)
  select c.run_id, c.step_slug, c.task_index, c.attempts_count, c.flow_slug, c.last_worker_id,
         c.started_at, now(), 'completed'
    from completed c;
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
                                      v_item.error_message, report_tasks.attempts[v_item.ord],
                                      report_tasks.retry_modes[v_item.ord],
                                      report_tasks.tracebacks[v_item.ord],
                                      report_tasks.outcomes[v_item.ord]);
    end if;
    if found then
      v_applied := v_applied + 1;
    end if;
  end loop;
  return v_applied;
end;
$$;
