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
  v_what text := format('step %L of flow %L', add_step.step_slug, add_step.flow_slug);
  v_missing text[];
  v_dup text;
  v_index int;
begin
  perform pgflow._check_slug('step', v_step_slug);
  perform 1 from pgflow.flows f where f.flow_slug = v_flow_slug for update;
  if not found then
    raise exception 'flow % does not exist; create it with pgflow.create_flow first',
      coalesce(quote_literal(v_flow_slug), 'NULL') using errcode = '22023';
  end if;

  select s.* into v_step from pgflow.steps s
  where s.flow_slug = v_flow_slug and s.step_slug = v_step_slug;
  if found then
    return v_step;
  end if;

  if add_step.step_type is null or add_step.step_type not in ('single', 'map') then
    raise exception '%: step_type must be ''single'' or ''map'', got %', v_what,
      coalesce(quote_literal(add_step.step_type), 'NULL') using errcode = '22023';
  end if;
  if add_step.when_unmet is null or add_step.when_unmet not in ('fail', 'skip', 'skip-cascade') then
    raise exception '%: when_unmet must be ''fail'', ''skip'' or ''skip-cascade'', got %', v_what,
      coalesce(quote_literal(add_step.when_unmet), 'NULL') using errcode = '22023';
  end if;
  if add_step.when_exhausted is null or add_step.when_exhausted not in ('fail', 'skip', 'skip-cascade') then
    raise exception '%: when_exhausted must be ''fail'', ''skip'' or ''skip-cascade'', got %', v_what,
      coalesce(quote_literal(add_step.when_exhausted), 'NULL') using errcode = '22023';
  end if;
  if add_step.required_input_pattern is not null
     and jsonb_typeof(add_step.required_input_pattern) <> 'object' then
    raise exception '%: required_input_pattern must be a JSON object, got %', v_what,
      jsonb_typeof(add_step.required_input_pattern) using errcode = '22023';
  end if;
  if add_step.forbidden_input_pattern is not null
     and jsonb_typeof(add_step.forbidden_input_pattern) <> 'object' then
    raise exception '%: forbidden_input_pattern must be a JSON object, got %', v_what,
      jsonb_typeof(add_step.forbidden_input_pattern) using errcode = '22023';
  end if;
  perform pgflow._check_option(v_what, 'max_attempts', add_step.max_attempts, 0);
  perform pgflow._check_option(v_what, 'base_delay', add_step.base_delay, 0);
  perform pgflow._check_option(v_what, 'timeout', add_step.timeout, 1);
  perform pgflow._check_option(v_what, 'start_delay', add_step.start_delay, 0);

  if v_step_slug = any (v_deps) then
    raise exception '%: a step cannot depend on itself', v_what using errcode = '22023';
  end if;
  select d into v_dup from unnest(v_deps) d group by d having count(*) > 1 limit 1;
  if found then
    raise exception '%: dependency % is listed more than once', v_what, quote_literal(v_dup)
      using errcode = '22023';
  end if;
  select array_agg(d order by d) into v_missing
  from unnest(v_deps) d
  where not exists (
    select 1 from pgflow.steps s where s.flow_slug = v_flow_slug and s.step_slug = d
  );
  if v_missing is not null then
    raise exception '%: unknown dependencies %; add the steps it depends on first',
      v_what, array_to_string(v_missing, ', ') using errcode = '22023';
  end if;
  if add_step.step_type = 'map' and cardinality(v_deps) > 1 then
    raise exception '%: a map step maps over one array, so it takes at most one dependency, got %',
      v_what, cardinality(v_deps) using errcode = '22023';
  end if;

  select coalesce(max(s.step_index) + 1, 0) into v_index
  from pgflow.steps s where s.flow_slug = v_flow_slug;

  insert into pgflow.steps (
    flow_slug, step_slug, step_type, step_index, deps_count,
    opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay,
    required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted
  ) values (
    v_flow_slug, v_step_slug, add_step.step_type, v_index, cardinality(v_deps),
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
