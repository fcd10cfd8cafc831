-- Fails one step and then its run.
create or replace function pgflow._fail_step(p_run_id uuid, p_step_slug text, p_error_message text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state pgflow.step_states;
begin
  update pgflow.step_states ss
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug and ss.status in ('created', 'started')
  returning ss.* into v_state;
  if v_state.run_id is not null then
    perform pgflow._emit(p_run_id, 'step:' || p_step_slug || ':failed', jsonb_build_object(
      'event_type', 'step:failed',
      'run_id', p_run_id,
      'step_slug', p_step_slug,
      'status', 'failed',
      'error_message', p_error_message,
      'failed_at', v_state.failed_at));
  end if;
  perform pgflow._fail_run(p_run_id, p_error_message);
end;
$$;
