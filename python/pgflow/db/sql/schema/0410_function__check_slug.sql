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
