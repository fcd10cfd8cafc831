-- Supabase's realtime.send is called from pgflow's security-definer paths only when it cannot be
-- a caller's object: it and its schema must belong to a superuser or to the owner the functions
-- run as (pgflow._realtime_send_trusted). Before, any function by that name was called, so a
-- login with CREATE on the database could create schema realtime and a send() that then ran as
-- the owner. _emit and _events_enabled are replaced whole; nothing else changes.

-- Whether Supabase's realtime.send(jsonb, text, text, boolean) exists and may be called. Our
-- callers run inside security-definer functions, as the owner of pgflow's functions
-- (current_user), so whatever realtime.send does runs with that owner's rights. It is called
-- only when the function and its schema both belong to a role that has those rights already: a
-- superuser (supabase_admin on Supabase) or the owner itself. A login that may create schemas
-- (CREATE on the database) and plants its own realtime.send is therefore never run as the
-- owner; and since only a trusted role can drop or replace a function in a trusted schema, the
-- function checked is the one called.
--
-- One catalog query (an index lookup on pg_proc by name and argument types: half the cost of
-- parsing a signature with to_regprocedure), and none when schema realtime does not exist (the
-- common case outside Supabase): _emit calls this for every event.
create or replace function pgflow._realtime_send_trusted()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if to_regnamespace('realtime') is null then
    return false;
  end if;
  return exists (
    select from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'realtime' and p.proname = 'send'
      -- (jsonb, text, text, boolean): the OIDs of built-in types never change
      and p.proargtypes = '3802 25 25 16'::oidvector
      and pg_has_role(p.proowner, current_user, 'USAGE')
      and pg_has_role(n.nspowner, current_user, 'USAGE'));
end;
$$;

-- Sends one event. With Supabase's realtime.send present (and owned by a role trusted to run as
-- pgflow's owner: pgflow._realtime_send_trusted), every event also goes there, so clients of the
-- contract see runs that our workers execute, with the payload as given. When our events are on
-- (pgflow._events_on), the event is also kept in pgflow.events, with the run's flow_slug, for
-- the workers' event relay.
create or replace function pgflow._emit(p_run_id uuid, p_event_name text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
begin
  -- nested rather than `and`: no function call at all when schema realtime does not exist
  if to_regnamespace('realtime') is not null then
    if pgflow._realtime_send_trusted() then
      perform realtime.send(p_payload, p_event_name, 'pgflow:run:' || p_run_id::text, false);
    end if;
  end if;
  if pgflow._events_on() then
    v_flow := p_payload ->> 'flow_slug';
    if v_flow is null then
      -- step events of pgflow's shape do not carry it; the caller holds the run's row already
      select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;
    end if;
    perform pgflow._store_event(p_run_id, v_flow, p_payload);
  end if;
end;
$$;

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

revoke all on function pgflow._realtime_send_trusted() from public;
