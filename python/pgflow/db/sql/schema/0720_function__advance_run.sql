-- Moves a run forward after any change: conditions, taskless steps, ready steps, completion.
create or replace function pgflow._advance_run(p_run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgflow.cascade_complete_taskless_steps(p_run_id);
  perform pgflow.start_ready_steps(p_run_id);
  perform pgflow.maybe_complete_run(p_run_id);
end;
$$;
