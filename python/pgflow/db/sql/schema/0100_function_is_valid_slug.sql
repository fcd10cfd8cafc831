-- Before the tables: their check constraints call it.
create or replace function pgflow.is_valid_slug(slug text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select slug is not null
     and length(slug) between 1 and 128
     and slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$'
     and slug <> 'run';
$$;
