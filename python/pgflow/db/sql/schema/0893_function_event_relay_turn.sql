-- One turn of the event relay of worker `holder` (our addition; see docs/events.md). Takes the
-- lease of relay `relay` for `lease_seconds` when it is free or has run out, or renews it when
-- `holder` has it already, then records that the holder delivered every event up to
-- `delivered` (ignored from a holder that did not have the lease). Returns one row:
--   last_id: every event up to it was delivered (or dropped); read after it, in id order.
--     NULL while another holder's lease runs (and then so are the next two);
--   last_assigned, writers: the last event id handed out, and the transactions (virtual ids)
--     that were writing events then. Events up to last_assigned may be read once none of the
--     writers is still running (a smaller id may still be committed until then);
--   events_on: whether this database keeps events (pgflow._events_on), so that a relay can say
--     when it will never get any.
create or replace function pgflow.event_relay_turn(relay text, holder text, lease_seconds int, delivered bigint)
returns table (last_id bigint, last_assigned bigint, writers text[], events_on boolean)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_relay text := event_relay_turn.relay;
  v_holder text := event_relay_turn.holder;
  v_last bigint;
begin
  if coalesce(v_relay, '') = '' or coalesce(v_holder, '') = '' then
    raise exception 'event_relay_turn: relay and holder must be non-empty' using errcode = '22023';
  end if;
  if lease_seconds is null or lease_seconds < 1 then
    raise exception 'event_relay_turn: lease_seconds must be at least 1, got %',
      coalesce(lease_seconds::text, 'NULL') using errcode = '22023';
  end if;
  events_on := pgflow._events_on();
  insert into pgflow.event_relay as r (name) values (v_relay) on conflict (name) do nothing;
  update pgflow.event_relay r
     set holder = v_holder,
         lease_until = now() + make_interval(secs => lease_seconds),
         last_id = case when r.holder = v_holder then greatest(r.last_id, coalesce(delivered, 0))
                        else r.last_id end,
         updated_at = now()
   where r.name = v_relay
     and (r.holder is null or r.holder = v_holder or r.lease_until < now())
  returning r.last_id into v_last;
  if not found then
    return next;
    return;
  end if;
  -- in this order: a writer that took an id up to last_assigned took its lock before, so it
  -- is listed below unless it has finished
  last_id := v_last;
  last_assigned := coalesce(pg_sequence_last_value(pg_get_serial_sequence('pgflow.events', 'id')::regclass), 0);
  writers := array(
    select l.virtualtransaction from pg_locks l
     where l.locktype = 'advisory' and l.classid = 1885434472 and l.objid = 2 and l.objsubid = 2
       and l.granted
       and l.database = (select d.oid from pg_database d where d.datname = current_database()));
  return next;
end;
$$;
