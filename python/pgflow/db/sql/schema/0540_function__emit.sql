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
