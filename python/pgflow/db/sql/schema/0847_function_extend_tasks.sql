-- A worker may claim tasks before it has a free slot for them (its prefetch). When such a task
-- finally starts, the worker calls this so that the handler gets its whole timeout: the task's
-- start moves to now (the stalled-task sweep measures from it) and its message stays hidden for
-- the step's timeout + 2 s from now. Only tasks still started by this worker in the named
-- attempt are touched (one requeued, given back or finished meanwhile is left alone); returns
-- how many were. Runs are locked first, in run_id order, as every function that reports does.
create or replace function pgflow.extend_tasks(
  p_flow_slug text,
  p_worker_id uuid,
  p_run_ids uuid[],
  p_step_slugs text[],
  p_task_indexes int[],
  p_attempts int[]
)
returns int
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_group record;
  v_count int := 0;
begin
  if coalesce(cardinality(p_run_ids), 0) = 0 then
    return 0;
  end if;
  perform 1 from pgflow.runs r
   where r.run_id = any (p_run_ids) and r.flow_slug = p_flow_slug
   order by r.run_id
  for update;
  for v_group in
    with moved as (
      update pgflow.step_tasks t
         set started_at = now()
        from unnest(p_run_ids, p_step_slugs, p_task_indexes, p_attempts)
               as v(run_id, step_slug, task_index, attempt)
       where t.run_id = v.run_id and t.step_slug = v.step_slug and t.task_index = v.task_index
         and t.flow_slug = p_flow_slug and t.status = 'started'
         and t.last_worker_id = p_worker_id and t.attempts_count = v.attempt
      returning t.message_id, t.step_slug
    )
    select coalesce(s.opt_timeout, f.opt_timeout) + 2 as secs, array_agg(m.message_id) as ids
      from moved m
      join pgflow.flows f on f.flow_slug = p_flow_slug
      left join pgflow.steps s on s.flow_slug = p_flow_slug and s.step_slug = m.step_slug
     group by 1
  loop
    execute format(
      'update pgmq.%I q set vt = clock_timestamp() + make_interval(secs => $2)
        where q.msg_id = any ($1)',
      pgmq.format_table_name(p_flow_slug, 'q'))
    using v_group.ids, v_group.secs;
    v_count := v_count + cardinality(v_group.ids);
  end loop;
  return v_count;
end;
$$;
