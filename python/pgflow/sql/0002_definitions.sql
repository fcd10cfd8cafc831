-- Defining flows: create_flow, add_step, flow shapes, ensure_flow_compiled, delete_flow_and_data.
-- Every check raises SQLSTATE 22023 (invalid_parameter_value) with a message that names the
-- flow, the step and what to do, so that a bad definition fails when it is made.

create or replace function pgflow._check_option(p_what text, p_name text, p_value int, p_min int)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is not null and p_value < p_min then
    raise exception '%: % must be % or more, got %', p_what, p_name, p_min, p_value
      using errcode = '22023';
  end if;
end;
$$;

create or replace function pgflow._check_slug(p_kind text, p_slug text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgflow.is_valid_slug(p_slug) then
    raise exception 'invalid % slug %: a slug is 1 to 128 characters of letters, digits and '
      'underscores, does not start with a digit, and is not the reserved word "run"',
      p_kind, coalesce(quote_literal(p_slug), 'NULL')
      using errcode = '22023';
  end if;
end;
$$;

create or replace function pgflow.create_flow(
  flow_slug text,
  max_attempts int default null,
  base_delay int default null,
  timeout int default null
)
returns pgflow.flows
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := create_flow.flow_slug;
  v_flow pgflow.flows;
  v_other text;
  v_what text := format('flow %L', create_flow.flow_slug);
begin
  perform pgflow._check_slug('flow', v_slug);
  if length(v_slug) > 47 then
    raise exception 'flow slug % is % characters long; a flow slug is also its pgmq queue name, '
      'which may have at most 47 characters: choose a shorter slug', quote_literal(v_slug), length(v_slug)
      using errcode = '22023';
  end if;
  perform pgflow._check_option(v_what, 'max_attempts', create_flow.max_attempts, 0);
  perform pgflow._check_option(v_what, 'base_delay', create_flow.base_delay, 0);
  perform pgflow._check_option(v_what, 'timeout', create_flow.timeout, 1);

  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if found then
    return v_flow;
  end if;

  select f.flow_slug into v_other from pgflow.flows f where lower(f.flow_slug) = lower(v_slug);
  if found then
    raise exception 'flow slug % differs only by letter case from existing flow %; pgmq queue '
      'names ignore case, so choose another slug', quote_literal(v_slug), quote_literal(v_other)
      using errcode = '22023';
  end if;

  insert into pgflow.flows (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (
    v_slug,
    coalesce(create_flow.max_attempts, 3),
    coalesce(create_flow.base_delay, 5),
    coalesce(create_flow.timeout, 60)
  )
  on conflict do nothing
  returning * into v_flow;

  if v_flow.flow_slug is null then
    -- another transaction created it (or a case twin) at the same moment
    select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
    if not found then
      raise exception 'flow slug % collides with a flow created concurrently that differs only by case',
        quote_literal(v_slug) using errcode = '22023';
    end if;
    return v_flow;
  end if;

  perform pgmq.create(v_slug);
  return v_flow;
end;
$$;

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

------------------------------------------------------------------------------------------------
-- Shapes
------------------------------------------------------------------------------------------------
create or replace function pgflow._pattern_shape(p_pattern jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_pattern is null then jsonb_build_object('defined', false)
    else jsonb_build_object('defined', true, 'value', p_pattern)
  end;
$$;

create or replace function pgflow._get_flow_shape(p_flow_slug text)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('steps', coalesce(jsonb_agg(
    jsonb_build_object(
      'slug', s.step_slug,
      'stepType', s.step_type,
      'dependencies', coalesce((
        select jsonb_agg(d.dep_slug order by d.dep_slug collate "C")
        from pgflow.deps d
        where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug
      ), '[]'::jsonb),
      'whenUnmet', s.when_unmet,
      'whenExhausted', s.when_exhausted,
      'requiredInputPattern', pgflow._pattern_shape(s.required_input_pattern),
      'forbiddenInputPattern', pgflow._pattern_shape(s.forbidden_input_pattern)
    ) order by s.step_index
  ), '[]'::jsonb))
  from pgflow.steps s
  where s.flow_slug = p_flow_slug;
$$;

-- A step of a shape with every omitted field given its default, and without runtime options,
-- so that two shapes can be compared field by field.
create or replace function pgflow._normalize_step_shape(p_step jsonb)
returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'slug', p_step -> 'slug',
    'stepType', coalesce(p_step -> 'stepType', '"single"'),
    'dependencies', coalesce((
      select jsonb_agg(d order by d collate "C")
      from jsonb_array_elements_text(coalesce(p_step -> 'dependencies', '[]')) d
    ), '[]'::jsonb),
    'whenUnmet', coalesce(p_step -> 'whenUnmet', '"skip"'),
    'whenExhausted', coalesce(p_step -> 'whenExhausted', '"fail"'),
    'requiredInputPattern', coalesce(p_step -> 'requiredInputPattern', '{"defined": false}'),
    'forbiddenInputPattern', coalesce(p_step -> 'forbiddenInputPattern', '{"defined": false}')
  );
$$;

create or replace function pgflow._check_shape(p_shape jsonb)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_shape is null or jsonb_typeof(p_shape) <> 'object'
     or jsonb_typeof(p_shape -> 'steps') is distinct from 'array' then
    raise exception 'a flow shape must be a JSON object with a "steps" array, got %',
      coalesce(left(p_shape::text, 200), 'NULL') using errcode = '22023';
  end if;
  if exists (
    select 1 from jsonb_array_elements(p_shape -> 'steps') s
    where jsonb_typeof(s) <> 'object' or jsonb_typeof(s -> 'slug') is distinct from 'string'
  ) then
    raise exception 'every step of a flow shape must be an object with a string "slug"'
      using errcode = '22023';
  end if;
end;
$$;

create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_diffs text[] := '{}';
  v_local jsonb[];
  v_db jsonb[];
  v_l jsonb;
  v_d jsonb;
  v_n int;
  v_field text;
  i int;
begin
  perform pgflow._check_shape(p_local);
  perform pgflow._check_shape(p_db);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_local from jsonb_array_elements(p_local -> 'steps') with ordinality t(s, o);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_db from jsonb_array_elements(p_db -> 'steps') with ordinality t(s, o);

  if cardinality(v_local) <> cardinality(v_db) then
    v_diffs := v_diffs || format('Step count differs: local %s, database %s',
      cardinality(v_local), cardinality(v_db));
  end if;

  v_n := greatest(cardinality(v_local), cardinality(v_db));
  for i in 1 .. v_n loop
    v_l := v_local[i];
    v_d := v_db[i];
    if v_d is null then
      v_diffs := v_diffs || format('Step %s (%s): present locally, missing in database',
        i - 1, v_l ->> 'slug');
      continue;
    elsif v_l is null then
      v_diffs := v_diffs || format('Step %s (%s): present in database, missing locally',
        i - 1, v_d ->> 'slug');
      continue;
    end if;
    foreach v_field in array array['slug', 'stepType', 'dependencies', 'whenUnmet',
                                   'whenExhausted', 'requiredInputPattern', 'forbiddenInputPattern'] loop
      if v_l -> v_field is distinct from v_d -> v_field then
        v_diffs := v_diffs || format('Step %s (%s): %s differs: local %s, database %s',
          i - 1, v_l ->> 'slug', v_field, v_l -> v_field, v_d -> v_field);
      end if;
    end loop;
  end loop;
  return v_diffs;
end;
$$;

create or replace function pgflow._shape_int(p_options jsonb, p_key text)
returns int
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_options is null or p_options -> p_key is null or p_options -> p_key = 'null'::jsonb then
    return null;
  end if;
  if jsonb_typeof(p_options -> p_key) <> 'number' then
    raise exception 'option % of a flow shape must be a whole number, got %', p_key, p_options -> p_key
      using errcode = '22023';
  end if;
  return (p_options ->> p_key)::int;
exception
  when invalid_text_representation or numeric_value_out_of_range then
    raise exception 'option % of a flow shape must be a whole number, got %', p_key, p_options -> p_key
      using errcode = '22023';
end;
$$;

create or replace function pgflow._create_flow_from_shape(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_opts jsonb := p_shape -> 'options';
  v_step jsonb;
  v_step_opts jsonb;
begin
  perform pgflow._check_shape(p_shape);
  perform pgflow.create_flow(
    p_flow_slug,
    max_attempts => pgflow._shape_int(v_opts, 'maxAttempts'),
    base_delay => pgflow._shape_int(v_opts, 'baseDelay'),
    timeout => pgflow._shape_int(v_opts, 'timeout')
  );
  for v_step in select s from jsonb_array_elements(p_shape -> 'steps') with ordinality t(s, o) order by o loop
    v_step_opts := v_step -> 'options';
    perform pgflow.add_step(
      flow_slug => p_flow_slug,
      step_slug => v_step ->> 'slug',
      deps_slugs => coalesce(
        (select array_agg(d) from jsonb_array_elements_text(coalesce(v_step -> 'dependencies', '[]')) d),
        '{}'),
      max_attempts => pgflow._shape_int(v_step_opts, 'maxAttempts'),
      base_delay => pgflow._shape_int(v_step_opts, 'baseDelay'),
      timeout => pgflow._shape_int(v_step_opts, 'timeout'),
      start_delay => pgflow._shape_int(v_step_opts, 'startDelay'),
      step_type => coalesce(v_step ->> 'stepType', 'single'),
      required_input_pattern => case when (v_step #> '{requiredInputPattern,defined}') = 'true'
                                     then v_step #> '{requiredInputPattern,value}' end,
      forbidden_input_pattern => case when (v_step #> '{forbiddenInputPattern,defined}') = 'true'
                                      then v_step #> '{forbiddenInputPattern,value}' end,
      when_unmet => coalesce(v_step ->> 'whenUnmet', 'skip'),
      when_exhausted => coalesce(v_step ->> 'whenExhausted', 'fail')
    );
  end loop;
end;
$$;

-- Runtime options are not part of a shape's identity; when a verified shape carries them, they
-- are applied, so a worker deploy can change retries and timeouts without data loss.
create or replace function pgflow._apply_shape_options(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_opts jsonb := p_shape -> 'options';
  v_step jsonb;
  v_step_opts jsonb;
begin
  if v_opts is not null and jsonb_typeof(v_opts) = 'object' then
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'max_attempts', pgflow._shape_int(v_opts, 'maxAttempts'), 0);
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'base_delay', pgflow._shape_int(v_opts, 'baseDelay'), 0);
    perform pgflow._check_option(format('flow %L', p_flow_slug), 'timeout', pgflow._shape_int(v_opts, 'timeout'), 1);
    update pgflow.flows f set
      opt_max_attempts = coalesce(pgflow._shape_int(v_opts, 'maxAttempts'), 3),
      opt_base_delay = coalesce(pgflow._shape_int(v_opts, 'baseDelay'), 5),
      opt_timeout = coalesce(pgflow._shape_int(v_opts, 'timeout'), 60)
    where f.flow_slug = p_flow_slug;
  end if;
  for v_step in select s from jsonb_array_elements(p_shape -> 'steps') s loop
    v_step_opts := v_step -> 'options';
    continue when v_step_opts is null or jsonb_typeof(v_step_opts) <> 'object';
    update pgflow.steps s set
      opt_max_attempts = pgflow._shape_int(v_step_opts, 'maxAttempts'),
      opt_base_delay = pgflow._shape_int(v_step_opts, 'baseDelay'),
      opt_timeout = pgflow._shape_int(v_step_opts, 'timeout'),
      opt_start_delay = pgflow._shape_int(v_step_opts, 'startDelay')
    where s.flow_slug = p_flow_slug and s.step_slug = v_step ->> 'slug';
  end loop;
end;
$$;

create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from pgflow.step_tasks t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states ss where ss.flow_slug = p_flow_slug;
  delete from pgflow.runs r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows f where f.flow_slug = p_flow_slug;
  if exists (select 1 from pgmq.meta m where m.queue_name = lower(p_flow_slug)) then
    perform pgmq.drop_queue(lower(p_flow_slug));
  end if;
end;
$$;

create or replace function pgflow.ensure_flow_compiled(
  flow_slug text,
  shape jsonb,
  allow_data_loss boolean default false
)
returns jsonb
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := ensure_flow_compiled.flow_slug;
  v_diffs text[];
begin
  perform pgflow._check_slug('flow', v_slug);
  perform pgflow._check_shape(ensure_flow_compiled.shape);
  -- one compiler per flow at a time; the lock ends with the transaction
  perform pg_advisory_xact_lock(1885434471, hashtext(v_slug));

  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'compiled', 'differences', '[]'::jsonb);
  end if;

  v_diffs := pgflow._compare_flow_shapes(ensure_flow_compiled.shape, pgflow._get_flow_shape(v_slug));
  if cardinality(v_diffs) = 0 then
    perform pgflow._apply_shape_options(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'verified', 'differences', '[]'::jsonb);
  end if;

  if coalesce(ensure_flow_compiled.allow_data_loss, false) then
    -- This function runs with its owner's rights, and worker and client roles may call it; the
    -- right to destroy a flow's data stays with whoever may call delete_flow_and_data (the
    -- owner). session_user is the login, which a non-superuser cannot change.
    if not has_function_privilege(session_user, 'pgflow.delete_flow_and_data(text)', 'execute') then
      raise exception 'flow % differs from the database and replacing it would delete its runs, '
        'which only the owner of schema pgflow may do; run the compile with allow_data_loss as that '
        'role, or deploy the changed flow under a new slug', quote_literal(v_slug)
        using errcode = '42501', detail = array_to_string(v_diffs, '; ');
    end if;
    perform pgflow.delete_flow_and_data(v_slug);
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'recompiled', 'differences', to_jsonb(v_diffs));
  end if;

  return jsonb_build_object('status', 'mismatch', 'differences', to_jsonb(v_diffs));
end;
$$;
