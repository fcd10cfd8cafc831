-- A task still started longer than its step's timeout + 30 s is taken to belong to a dead
-- worker: it goes back to the queue with its message visible at once. A task that has already
-- been requeued 3 times is marked permanently stalled and fails like a task whose attempts are
-- used up, so its run cannot hang forever (its permanently_stalled_at tells it apart). As in
-- pgflow, a requeued task forgets its start and worker, and the result counts only the tasks
-- requeued; the worker that runs the sweep finds the terminalized ones by permanently_stalled_at.
-- Either way the attempt ends, recorded in task_attempts as stalled.
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

    insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                      started_at, ended_at, outcome, error_message)
    values (v_current.run_id, v_current.step_slug, v_current.task_index, v_current.attempts_count,
            v_current.flow_slug, v_current.last_worker_id, v_current.started_at, now(), 'stalled',
            format('no result within the step''s timeout of %s s + 30 s: its worker is presumed dead',
                   v_task.timeout));

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
