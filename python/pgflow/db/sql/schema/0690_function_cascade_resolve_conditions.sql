create or replace function pgflow.cascade_resolve_conditions(run_id uuid)
returns boolean
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := cascade_resolve_conditions.run_id;
  v_step pgflow.steps;
  v_subject jsonb;
  v_changed boolean;
begin
  loop
    if not exists (select 1 from pgflow.runs r where r.run_id = v_run_id and r.status = 'started') then
      return false;
    end if;
    v_changed := false;
    for v_step in
      select s.*
        from pgflow.step_states ss
        join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and (s.required_input_pattern is not null or s.forbidden_input_pattern is not null)
       order by s.step_index
    loop
      -- an earlier skip in this pass may have reached this step already
      continue when not exists (
        select 1 from pgflow.step_states ss
         where ss.run_id = v_run_id and ss.step_slug = v_step.step_slug and ss.status = 'created');
      v_subject := pgflow._condition_subject(v_run_id, v_step);
      continue when (v_step.required_input_pattern is null or v_subject @> v_step.required_input_pattern)
                and (v_step.forbidden_input_pattern is null or not v_subject @> v_step.forbidden_input_pattern);
      if v_step.when_unmet = 'fail' then
        perform pgflow._fail_step(v_run_id, v_step.step_slug, 'Condition not met');
        return false;
      elsif v_step.when_unmet = 'skip-cascade' then
        perform pgflow._cascade_force_skip_steps(v_run_id, v_step.step_slug, 'condition_unmet');
      else
        perform pgflow._skip_steps(v_run_id, array[v_step.step_slug], array['condition_unmet']);
      end if;
      v_changed := true;
    end loop;
    exit when not v_changed;
  end loop;
  return true;
end;
$$;
