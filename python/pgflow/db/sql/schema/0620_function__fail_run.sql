-- Fails a started run: open tasks are cancelled and their messages archived.
create or replace function pgflow._fail_run(p_run_id uuid, p_error_message text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
begin
  update pgflow.runs r
     set status = 'failed', failed_at = now(), error_message = p_error_message
   where r.run_id = p_run_id and r.status = 'started'
  returning r.* into v_run;
  if v_run.run_id is null then
    return;
  end if;

  perform pgflow._cancel_open_tasks(p_run_id, v_run.flow_slug);

  perform pgflow._emit(p_run_id, 'run:failed', jsonb_build_object(
    'event_type', 'run:failed',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'failed',
    'error_message', p_error_message,
    'failed_at', v_run.failed_at));
end;
$$;
