-- Sends one event. With Supabase's realtime.send present, every event also goes there, so
-- clients of the contract see runs that our workers execute; our own delivery to Python is a
-- NOTIFY on channel pgflow_events when the setting pgflow.events is 'on' (per database: alter
-- database ... set pgflow.events = 'on'). It is off by default: NOTIFY serializes commits, and
-- costs about half of the throughput of short tasks.
create or replace function pgflow._emit(p_run_id uuid, p_event_name text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_text text;
begin
  if to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null then
    perform realtime.send(p_payload, p_event_name, 'pgflow:run:' || p_run_id::text, false);
  end if;
  if coalesce(current_setting('pgflow.events', true), '') = 'on' then
    v_text := p_payload::text;
    -- NOTIFY payloads are limited to 8000 bytes: large inputs and outputs stay in the tables
    if octet_length(v_text) > 7900 then
      v_text := (p_payload - 'input' - 'output' || jsonb_build_object('truncated', true))::text;
    end if;
    if octet_length(v_text) <= 7900 then
      perform pg_notify('pgflow_events', v_text);
    end if;
  end if;
end;
$$;
