-- A task whose attempts are used up: the step's when_exhausted decides what happens next.
create or replace function pgflow._task_exhausted(
  p_run_id uuid, p_step_slug text, p_task_index int, p_error_message text
)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_msg bigint;
  v_mode text;
begin
  update pgflow.step_tasks t
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where t.run_id = p_run_id and t.step_slug = p_step_slug and t.task_index = p_task_index
  returning t.flow_slug, t.message_id into v_flow, v_msg;
  perform pgflow._archive_messages(v_flow, array[v_msg]);

  select s.when_exhausted into v_mode from pgflow.steps s
   where s.flow_slug = v_flow and s.step_slug = p_step_slug;
  if v_mode = 'skip' then
    perform pgflow._skip_steps(p_run_id, array[p_step_slug], array['handler_failed'], p_error_message);
    perform pgflow._advance_run(p_run_id);
  elsif v_mode = 'skip-cascade' then
    perform pgflow._skip_with_dependents(p_run_id, p_step_slug, 'handler_failed', p_error_message);
    perform pgflow._advance_run(p_run_id);
  else
    perform pgflow._fail_step(p_run_id, p_step_slug, p_error_message);
  end if;
end;
$$;
