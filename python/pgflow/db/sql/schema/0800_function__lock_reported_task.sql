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
