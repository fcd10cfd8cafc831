-- Bookkeeping after a step completed: children lose a dependency, a dependent map learns its
-- task count, the run has one step less to go, and step:completed is sent.
create or replace function pgflow._after_step_completed(p_run_id uuid, p_step_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state pgflow.step_states;
  v_step pgflow.steps;
begin
  select ss.* into v_state from pgflow.step_states ss
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug;
  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_state.flow_slug and s.step_slug = p_step_slug;

  update pgflow.step_states child
     set remaining_deps = child.remaining_deps - 1,
         initial_tasks = case
           when cs.step_type = 'map' and child.initial_tasks is null then
             case when v_step.step_type = 'map' then v_state.initial_tasks
                  when jsonb_typeof(v_state.output) = 'array' then jsonb_array_length(v_state.output)
                  else 0 end
           else child.initial_tasks end
    from pgflow.deps d, pgflow.steps cs
   where d.flow_slug = v_state.flow_slug and d.dep_slug = p_step_slug
     and cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
     and child.run_id = p_run_id and child.step_slug = d.step_slug and child.status = 'created';

  update pgflow.runs r set remaining_steps = r.remaining_steps - 1 where r.run_id = p_run_id;

  perform pgflow._emit(p_run_id, 'step:' || p_step_slug || ':completed', jsonb_build_object(
    'event_type', 'step:completed',
    'run_id', p_run_id,
    'step_slug', p_step_slug,
    'status', 'completed',
    'output', v_state.output,
    'completed_at', v_state.completed_at)
    -- a taskless step (completed by the cascade) says more, as in pgflow
    || case when v_state.initial_tasks = 0 then jsonb_build_object(
         'started_at', v_state.started_at,
         'remaining_tasks', 0,
         'remaining_deps', 0) else '{}'::jsonb end);
end;
$$;
