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
