-- Completes, wave after wave, every ready step that has no tasks: a map over an empty array
-- outputs [], a single step NULL; it is started and completed at once (started_at and
-- completed_at both set, as in pgflow). Conditions of newly ready steps are resolved between waves,
-- so a step whose condition fails is skipped rather than completed. The number of waves is
-- bounded by the number of steps in the run.
create or replace function pgflow.cascade_complete_taskless_steps(run_id uuid)
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := cascade_complete_taskless_steps.run_id;
  v_total int := 0;
  v_wave text[];
  v_slug text;
  v_max_waves int;
begin
  select count(*) into v_max_waves from pgflow.step_states ss where ss.run_id = v_run_id;
  for i in 1 .. v_max_waves + 1 loop
    exit when not pgflow.cascade_resolve_conditions(v_run_id);

    with done as (
      update pgflow.step_states ss
         set status = 'completed', started_at = now(), completed_at = now(), remaining_tasks = 0,
             output = case when s.step_type = 'map' then '[]'::jsonb else null end
        from pgflow.steps s
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and ss.initial_tasks = 0
         and s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
      returning ss.step_slug, s.step_index
    )
    select array_agg(d.step_slug order by d.step_index) into v_wave from done d;
    exit when v_wave is null;

    foreach v_slug in array v_wave loop
      perform pgflow._after_step_completed(v_run_id, v_slug);
    end loop;
    v_total := v_total + cardinality(v_wave);
  end loop;
  return v_total;
end;
$$;
