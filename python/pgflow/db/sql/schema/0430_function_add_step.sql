-- Appends a step with the next step_index, and its edges; an existing step is returned
-- unchanged. Like pgflow, only a map step's dependency count is checked here (first, with
-- pgflow's message); every other bad value is left to the tables' constraints, so callers see
-- the same errors: steps_flow_slug_fkey (unknown flow), steps_step_slug_check, steps_step_type_check,
-- the opt_*, *_input_pattern_is_object and when_*_is_valid checks, deps_check (a step that
-- depends on itself), deps_flow_slug_dep_slug_fkey (unknown dependency) and
-- steps_flow_slug_step_index_key. One check is ours: a dependency listed twice would count twice
-- in deps_count and leave the step waiting forever, so it is refused.
create or replace function pgflow.add_step(
  flow_slug text,
  step_slug text,
  deps_slugs text[] default '{}',
  max_attempts int default null,
  base_delay int default null,
  timeout int default null,
  start_delay int default null,
  step_type text default 'single',
  required_input_pattern jsonb default null,
  forbidden_input_pattern jsonb default null,
  when_unmet text default 'skip',
  when_exhausted text default 'fail'
)
returns pgflow.steps
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow_slug text := add_step.flow_slug;
  v_step_slug text := add_step.step_slug;
  v_deps text[] := coalesce(add_step.deps_slugs, '{}');
  v_step pgflow.steps;
  v_dup text;
begin
  if coalesce(add_step.step_type, 'single') = 'map' and cardinality(v_deps) > 1 then
    raise exception 'Map step "%" can have at most one dependency, but % were provided: %',
      v_step_slug, cardinality(v_deps), array_to_string(v_deps, ', ');
  end if;
  select d into v_dup from unnest(v_deps) d group by d having count(*) > 1 limit 1;
  if found then
    raise exception 'step % of flow % lists dependency % more than once; list each dependency once',
      quote_literal(v_step_slug), quote_literal(v_flow_slug), quote_literal(v_dup)
      using errcode = '22023';
  end if;

  -- steps of one flow are appended one at a time (step_index is the count so far)
  perform 1 from pgflow.flows f where f.flow_slug = v_flow_slug for update;

  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_flow_slug and s.step_slug = v_step_slug;
  if found then
    return v_step;
  end if;

  insert into pgflow.steps (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted
  ) values (
    v_flow_slug, v_step_slug, coalesce(add_step.step_type, 'single'),
    (select count(*) from pgflow.steps s where s.flow_slug = v_flow_slug), cardinality(v_deps),
    add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay,
    add_step.required_input_pattern, add_step.forbidden_input_pattern,
    add_step.when_unmet, add_step.when_exhausted
  )
  returning * into v_step;

  insert into pgflow.deps (flow_slug, dep_slug, step_slug)
  select v_flow_slug, d, v_step_slug from unnest(v_deps) d;

  return v_step;
end;
$$;
