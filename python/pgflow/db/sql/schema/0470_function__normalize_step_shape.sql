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
