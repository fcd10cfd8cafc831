-- Moves a run forward after any change: conditions, taskless steps, ready steps, completion.
create or replace function pgflow._advance_run(p_run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ready boolean;
  v_special boolean;
begin
  -- most calls find no step ready, or only steps with tasks and no condition: the cascade
  -- (conditions, steps without tasks) runs only when a ready step needs it
  select count(*) > 0, coalesce(bool_or(ss.initial_tasks = 0 or s.required_input_pattern is not null
                                        or s.forbidden_input_pattern is not null), false)
    into v_ready, v_special
    from pgflow.step_states ss
    join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
   where ss.run_id = p_run_id and ss.status = 'created' and ss.remaining_deps = 0;
  if v_special then
    perform pgflow.cascade_complete_taskless_steps(p_run_id);
  end if;
  if v_ready then
    perform pgflow.start_ready_steps(p_run_id);
  end if;
  perform pgflow.maybe_complete_run(p_run_id);
end;
$$;
