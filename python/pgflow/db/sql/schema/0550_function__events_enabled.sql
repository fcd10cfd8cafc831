-- Whether events must be built at all: for Supabase's realtime.send, or for our NOTIFY when the
-- database enables it (alter database ... set pgflow.events = 'on').
create or replace function pgflow._events_enabled()
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null
      or coalesce(current_setting('pgflow.events', true), '') = 'on';
$$;
