-- Keeps one event in pgflow.events, in the caller's transaction, and wakes the event relay with
-- an empty NOTIFY (Postgres sends one per transaction however many events it holds). Callers
-- check pgflow._events_on() first. The payload gets the run's flow_slug.
create or replace function pgflow._store_event(p_run_id uuid, p_flow_slug text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Held until this transaction ends, and taken before the id is: the relay lists the holders
  -- (pgflow.event_relay_turn) and reads past an id only once every writer that might still
  -- commit a smaller one has finished.
  perform pg_advisory_xact_lock_shared(1885434472, 2);
  insert into pgflow.events (run_id, flow_slug, event_type, payload)
  values (p_run_id, p_flow_slug, p_payload ->> 'event_type',
          p_payload || jsonb_build_object('flow_slug', p_flow_slug));
  perform pg_notify('pgflow_events', '');
end;
$$;
