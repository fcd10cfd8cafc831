-- Whether events must be built at all: for Supabase's realtime.send when it may be called
-- (pgflow._realtime_send_trusted), or for our own (pgflow._events_on). PL/pgSQL rather than
-- SQL: a SQL function with a SET clause is not inlined, and is parsed and planned at every call.
create or replace function pgflow._events_enabled()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if pgflow._events_on() then
    return true;
  end if;
  -- no further call when schema realtime does not exist, as in pgflow._emit
  if to_regnamespace('realtime') is null then
    return false;
  end if;
  return pgflow._realtime_send_trusted();
end;
$$;
