-- Skips a step and every step that depends on it, directly or not; the step gets skip_reason,
-- its dependents 'dependency_skipped'. Returns how many steps were skipped.
create or replace function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
returns int
language sql
volatile
set search_path = pg_catalog, pg_temp
as $$
  select pgflow._skip_with_dependents(_cascade_force_skip_steps.run_id,
    _cascade_force_skip_steps.step_slug, _cascade_force_skip_steps.skip_reason, null);
$$;
