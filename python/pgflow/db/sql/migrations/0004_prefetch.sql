-- Prefetched tasks: a worker may hold claimed tasks that have not started yet. extend_tasks
-- gives such a task its whole timeout when it starts late; release_tasks gives unstarted tasks
-- back (at a worker's stop) without counting an attempt.

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

-- Gives back tasks a worker claimed but never started (its prefetch, when it stops): each goes
-- back to the queue as if it had not been claimed (its attempt is not counted, since its
-- handler never ran) and its message is visible at once; other workers are woken. Only tasks
-- still started by this worker in the named attempt are touched; returns how many were. Runs
-- are locked first, in run_id order.
create or replace function pgflow.release_tasks(
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
  v_ids bigint[];
begin
  if coalesce(cardinality(p_run_ids), 0) = 0 then
    return 0;
  end if;
  perform 1 from pgflow.runs r
   where r.run_id = any (p_run_ids) and r.flow_slug = p_flow_slug
   order by r.run_id
  for update;
  with released as (
    update pgflow.step_tasks t
       set status = 'queued', attempts_count = t.attempts_count - 1, started_at = null,
           last_worker_id = null
      from unnest(p_run_ids, p_step_slugs, p_task_indexes, p_attempts)
             as v(run_id, step_slug, task_index, attempt)
     where t.run_id = v.run_id and t.step_slug = v.step_slug and t.task_index = v.task_index
       and t.flow_slug = p_flow_slug and t.status = 'started'
       and t.last_worker_id = p_worker_id and t.attempts_count = v.attempt
    returning t.message_id
  )
  select array_agg(message_id) into v_ids from released;
  if v_ids is null then
    return 0;
  end if;
  execute format(
    'update pgmq.%I q set vt = clock_timestamp() where q.msg_id = any ($1)',
    pgmq.format_table_name(p_flow_slug, 'q'))
  using v_ids;
  perform pgflow._notify_tasks(p_flow_slug);
  return cardinality(v_ids);
end;
$$;

revoke all on function pgflow.extend_tasks(text, uuid, uuid[], text[], int[], int[]) from public;
revoke all on function pgflow.release_tasks(text, uuid, uuid[], text[], int[], int[]) from public;

do $$
begin
  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.extend_tasks(text, uuid, uuid[], text[], int[], int[])
      to pgflow_worker;
    grant execute on function pgflow.release_tasks(text, uuid, uuid[], text[], int[], int[])
      to pgflow_worker;
  end if;
end;
$$;
