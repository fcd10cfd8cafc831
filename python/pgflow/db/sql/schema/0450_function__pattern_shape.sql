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
