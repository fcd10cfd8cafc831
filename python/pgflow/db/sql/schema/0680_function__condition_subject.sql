-- The value a step's condition is checked against: the run input for a root step, the object of
-- completed dependency outputs for a dependent step (skipped dependencies left out).
create or replace function pgflow._condition_subject(p_run_id uuid, p_step pgflow.steps)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_step.deps_count = 0 then (select r.input from pgflow.runs r where r.run_id = p_run_id)
    else coalesce((
      select jsonb_object_agg(d.dep_slug, ps.output)
        from pgflow.deps d
        join pgflow.step_states ps on ps.run_id = p_run_id and ps.step_slug = d.dep_slug
       where d.flow_slug = p_step.flow_slug and d.step_slug = p_step.step_slug and ps.status = 'completed'
    ), '{}'::jsonb)
  end;
$$;
