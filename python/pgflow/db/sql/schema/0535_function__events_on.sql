-- Whether our own events are kept (pgflow.events) and relayed to event sinks: the setting
-- pgflow.events, per database (`pgflow db events on|off`, i.e. alter database ... set
-- pgflow.events = 'on'|'off'; sessions opened afterwards see it). See docs/events.md.
create or replace function pgflow._events_on()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return coalesce(nullif(current_setting('pgflow.events', true), ''), 'off') = 'on';
end;
$$;
