-- Our form: see complete_task. `retry` (our addition) says what a failure that has attempts
-- left does: 'backoff' (the default, and NULL) queues the task again after the step's
-- exponential delay; 'now' queues it again without delay (a worker that stopped before its
-- task finished); 'never' fails the task at once, whatever attempts are left, and applies the
-- step's when_exhausted (a handler that raised pgflow.Fail, an input its handler cannot take).
-- The failure ends the attempt, recorded in task_attempts with `traceback` (ours: the handler's,
-- NULL when there is none) and `outcome` (ours: 'failed', the default and NULL; 'timed_out' for a
-- handler that ran past its timeout; 'worker_stopped' for one its worker stopped before it ended).
create or replace function pgflow.fail_task(
  run_id uuid, step_slug text, task_index int, error_message text, attempt int,
  retry text default null, traceback text default null, outcome text default null
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
  v_delay int;
begin
  if fail_task.retry is not null and fail_task.retry not in ('backoff', 'now', 'never') then
    raise exception 'fail_task: retry must be ''backoff'', ''now'' or ''never'', got %',
      quote_literal(fail_task.retry) using errcode = '22023';
  end if;
  if fail_task.outcome is not null and fail_task.outcome not in ('failed', 'timed_out', 'worker_stopped') then
    raise exception 'fail_task: outcome must be ''failed'', ''timed_out'' or ''worker_stopped'', got %',
      quote_literal(fail_task.outcome) using errcode = '22023';
  end if;
  v_task := pgflow._lock_reported_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                       fail_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome, error_message, traceback)
  values (v_task.run_id, v_task.step_slug, v_task.task_index, v_task.attempts_count, v_task.flow_slug,
          v_task.last_worker_id, v_task.started_at, now(), coalesce(fail_task.outcome, 'failed'),
          fail_task.error_message, fail_task.traceback);

  select coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay)
    into v_max_attempts, v_base_delay
    from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_task.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts and fail_task.retry is distinct from 'never' then
    update pgflow.step_tasks t
       set status = 'queued', error_message = fail_task.error_message, queued_at = now(),
           started_at = null
     where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    v_delay := case when fail_task.retry = 'now' then 0
                    else pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count) end;
    perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[v_delay]);
    -- ours only (pgflow sends nothing on a retry, so realtime.send does not get it)
    if pgflow._events_on() then
      perform pgflow._store_event(fail_task.run_id, v_task.flow_slug, jsonb_build_object(
        'event_type', 'task:retrying',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'task_index', fail_task.task_index,
        'status', 'queued',
        'attempt', v_task.attempts_count,
        'error_message', fail_task.error_message,
        'retry_in_seconds', v_delay));
    end if;
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
