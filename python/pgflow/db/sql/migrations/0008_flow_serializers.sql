-- Serializers named by flows (our addition): pgflow.flow_serializers records the one a flow's
-- shape names, where the shape's options are applied.

-- The serializer a flow names (our addition): how its handlers' inputs and outputs map between
-- Python values and JSON, recorded with the flow so that clients and every worker agree. A flow
-- without a row uses the default. Kept apart from pgflow.flows, whose columns (and so
-- create_flow's result) follow pgflow's contract; it goes with its flow.
create table pgflow.flow_serializers (
  flow_slug text primary key references pgflow.flows (flow_slug) on delete cascade,
  serializer text not null,
  constraint serializer_is_named check (length(serializer) between 1 and 128)
);

revoke all on table pgflow.flow_serializers from public;

-- Records the serializer a shape's options name (`"serializer": "<name>"`), or forgets it when
-- they name none: called where a shape's options are applied (a flow created or verified).
create or replace function pgflow._record_serializer(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := p_shape #>> '{options,serializer}';
begin
  if v_name is null then
    delete from pgflow.flow_serializers s where s.flow_slug = p_flow_slug;
  else
    insert into pgflow.flow_serializers (flow_slug, serializer) values (p_flow_slug, v_name)
    on conflict (flow_slug) do update set serializer = excluded.serializer;
  end if;
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
  perform pgflow._record_serializer(p_flow_slug, p_shape);
end;
$$;

-- Runtime options are not part of a shape's identity; when a verified shape carries them, they
-- are applied, so a worker deploy can change retries and timeouts without data loss. Bad values
-- are left to the tables' constraints, as in create_flow and add_step.
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
    update pgflow.flows f set
      opt_max_attempts = coalesce(pgflow._shape_int(v_opts, 'maxAttempts'), 3),
      opt_base_delay = coalesce(pgflow._shape_int(v_opts, 'baseDelay'), 5),
      opt_timeout = coalesce(pgflow._shape_int(v_opts, 'timeout'), 60)
    where f.flow_slug = p_flow_slug;
    perform pgflow._record_serializer(p_flow_slug, p_shape);
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

revoke all on function pgflow._record_serializer(text, jsonb) from public;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant select on pgflow.flow_serializers to %I', v_role);
  end loop;
end;
$$;
