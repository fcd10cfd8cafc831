-- Cancels every open (queued or started) task of a run and archives their messages. A started
-- task's attempt ends here: it is recorded as cancelled, saying why (the run is already failed or
-- cancelled when this runs).
create or replace function pgflow._cancel_open_tasks(p_run_id uuid, p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_msgs bigint[];
begin
  -- never before the attempt's start: a claim that committed while this transaction waited for
  -- the run's lock started the task after this transaction's now()
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome, error_message)
  select t.run_id, t.step_slug, t.task_index, t.attempts_count, t.flow_slug, t.last_worker_id,
         t.started_at, greatest(now(), t.started_at), 'cancelled',
         case when r.status = 'cancelled' then 'the run was cancelled'
              else 'the run failed: ' || coalesce(r.error_message, 'no reason given') end
    from pgflow.step_tasks t join pgflow.runs r on r.run_id = t.run_id
   where t.run_id = p_run_id and t.status = 'started';

  with cancelled as (
    update pgflow.step_tasks t set status = 'cancelled'
     where t.run_id = p_run_id and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(c.message_id) into v_msgs from cancelled c where c.message_id is not null;
  perform pgflow._archive_messages(p_flow_slug, v_msgs);
end;
$$;
