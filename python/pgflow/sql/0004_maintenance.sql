-- Workers, stalled-task recovery, pruning and cancellation.

create or replace function pgflow.register_worker(worker_id uuid, queue_name text, function_name text)
returns pgflow.workers
language sql
volatile
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

-- Our addition: cancels a started run. Its open tasks are cancelled and their messages archived;
-- results that arrive later are ignored like any late callback. Returns the run; a run that has
-- already finished is returned unchanged.
create or replace function pgflow.cancel_run(run_id uuid)
returns pgflow.runs
language plpgsql
volatile
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
