create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := start_flow.flow_slug;
  v_run pgflow.runs;
  v_input_length int;
begin
  -- As in pgflow: a flow with root map steps needs an array; everything else is left to the
  -- runs table (an unknown flow violates runs_flow_slug_fkey, SQL NULL the input's not-null).
  if exists (select 1 from pgflow.steps s
              where s.flow_slug = v_slug and s.step_type = 'map' and s.deps_count = 0) then
    if start_flow.input is null then
      raise exception 'Flow % has root map steps but input is NULL', v_slug;
    end if;
    if jsonb_typeof(start_flow.input) <> 'array' then
      raise exception 'Flow % has root map steps but input is not an array (got %)',
        v_slug, jsonb_typeof(start_flow.input);
    end if;
  end if;

  -- computed apart: inside the insert's CASE the planner would fold it even for non-arrays
  if jsonb_typeof(start_flow.input) = 'array' then
    v_input_length := jsonb_array_length(start_flow.input);
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
  select coalesce(start_flow.run_id, gen_random_uuid()), v_slug, start_flow.input, count(*)
    from pgflow.steps s where s.flow_slug = v_slug
  returning * into v_run;

  insert into pgflow.step_states (flow_slug, run_id, step_slug, remaining_deps, initial_tasks)
  select v_slug, v_run.run_id, s.step_slug, s.deps_count,
         case when s.step_type = 'single' then 1
              when s.deps_count = 0 then v_input_length
              else null end
    from pgflow.steps s where s.flow_slug = v_slug;

  perform pgflow._emit(v_run.run_id, 'run:started', jsonb_build_object(
    'event_type', 'run:started',
    'run_id', v_run.run_id,
    'flow_slug', v_slug,
    'input', v_run.input,
    'status', 'started',
    'remaining_steps', v_run.remaining_steps,
    'started_at', v_run.started_at));

  perform pgflow._advance_run(v_run.run_id);

  return query select r.* from pgflow.runs r where r.run_id = v_run.run_id;
end;
$$;
