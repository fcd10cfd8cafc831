-- Skips a step and every step that depends on it, directly or not; the step gets p_skip_reason,
-- its dependents 'dependency_skipped'. Returns how many steps were skipped.
create or replace function pgflow._cascade_force_skip_steps(run_id uuid, step_slug text, skip_reason text)
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
  if _cascade_force_skip_steps.skip_reason is null
     or _cascade_force_skip_steps.skip_reason not in ('condition_unmet', 'handler_failed', 'dependency_skipped') then
    raise exception 'skip_reason must be ''condition_unmet'', ''handler_failed'' or ''dependency_skipped'', got %',
      coalesce(quote_literal(_cascade_force_skip_steps.skip_reason), 'NULL') using errcode = '22023';
  end if;
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = _cascade_force_skip_steps.run_id;
  if v_flow is null then
    raise exception 'run % does not exist', _cascade_force_skip_steps.run_id using errcode = '22023';
  end if;

  with recursive dependents(slug) as (
    select _cascade_force_skip_steps.step_slug
    union
    select d.step_slug from pgflow.deps d join dependents x on d.dep_slug = x.slug
     where d.flow_slug = v_flow
  )
  select array_agg(x.slug),
         array_agg(case when x.slug = _cascade_force_skip_steps.step_slug
                        then _cascade_force_skip_steps.skip_reason else 'dependency_skipped' end)
    into v_steps, v_reasons
    from dependents x;

  return pgflow._skip_steps(_cascade_force_skip_steps.run_id, v_steps, v_reasons);
end;
$$;
