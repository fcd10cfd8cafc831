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
