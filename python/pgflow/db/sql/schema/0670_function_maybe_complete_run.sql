create or replace function pgflow.maybe_complete_run(run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
  v_output jsonb;
begin
  select r.* into v_run from pgflow.runs r where r.run_id = maybe_complete_run.run_id;
  if v_run.run_id is null or v_run.status <> 'started' or v_run.remaining_steps > 0 then
    return;
  end if;

  select jsonb_object_agg(ss.step_slug, ss.output) into v_output
    from pgflow.step_states ss
   where ss.run_id = v_run.run_id and ss.status = 'completed'
     and not exists (
       select 1 from pgflow.deps d where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug
     );

  update pgflow.runs r set status = 'completed', completed_at = now(), output = v_output
   where r.run_id = v_run.run_id
  returning r.* into v_run;

  perform pgflow._emit(v_run.run_id, 'run:completed', jsonb_build_object(
    'event_type', 'run:completed',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'completed',
    'output', v_run.output,
    'completed_at', v_run.completed_at));
end;
$$;
