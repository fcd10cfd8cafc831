-- _cascade_force_skip_steps, with the error that made the step skip (a task out of attempts
-- under when_exhausted 'skip-cascade'), which the skipped step keeps.
create or replace function pgflow._skip_with_dependents(
  p_run_id uuid, p_step_slug text, p_skip_reason text, p_error_message text
)
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_steps text[];
  v_reasons text[];
begin
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;
  if v_flow is null then
    raise exception 'Run not found: %', p_run_id;
  end if;

  with recursive dependents(slug) as (
    select p_step_slug
    union
    select d.step_slug from pgflow.deps d join dependents x on d.dep_slug = x.slug
     where d.flow_slug = v_flow
  )
  select array_agg(x.slug),
         array_agg(case when x.slug = p_step_slug then p_skip_reason else 'dependency_skipped' end)
    into v_steps, v_reasons
    from dependents x;

  return pgflow._skip_steps(p_run_id, v_steps, v_reasons, p_error_message);
end;
$$;
