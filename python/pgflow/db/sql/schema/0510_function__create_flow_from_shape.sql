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
