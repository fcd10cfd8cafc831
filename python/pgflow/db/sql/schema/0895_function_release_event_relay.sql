-- A relay that stops records what it delivered and gives its lease up, so another worker's
-- relay takes over at its next turn rather than when the lease runs out (our addition).
create or replace function pgflow.release_event_relay(relay text, holder text, delivered bigint)
returns void
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.event_relay r
     set last_id = greatest(r.last_id, coalesce(release_event_relay.delivered, 0)),
         holder = null, lease_until = null, updated_at = now()
   where r.name = release_event_relay.relay and r.holder = release_event_relay.holder;
$$;
