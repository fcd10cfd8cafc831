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
