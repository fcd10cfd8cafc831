create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := start_flow.flow_slug;
  v_root_map text;
  v_run pgflow.runs;
  v_input_length int;
begin
  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    raise exception 'flow % does not exist; define it first (pgflow.create_flow / ensure_flow_compiled)',
      coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  select s.step_slug into v_root_map from pgflow.steps s
   where s.flow_slug = v_slug and s.step_type = 'map' and s.deps_count = 0
   order by s.step_index limit 1;
  if v_root_map is not null
     and (start_flow.input is null or jsonb_typeof(start_flow.input) <> 'array') then
    raise exception 'flow % starts with root map step %, so its input must be a JSON array, got %',
      quote_literal(v_slug), quote_literal(v_root_map),
      coalesce(jsonb_typeof(start_flow.input), 'SQL NULL') using errcode = '22023';
  end if;
  if start_flow.input is null then
    raise exception 'the input of flow % must not be SQL NULL; pass a JSON value such as ''{}''::jsonb or ''null''::jsonb',
      quote_literal(v_slug) using errcode = '22023';
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
