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
