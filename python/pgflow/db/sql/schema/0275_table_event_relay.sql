-- Which worker relays events to sinks, until when (its lease), and how far it got (our
-- addition). One row per relay name; the row is created by the first worker that asks. A
-- worker that stops releases its lease; one that dies loses it when the lease runs out, and
-- the next one resumes after last_id.
create table pgflow.event_relay (
  name text primary key,
  last_id bigint not null default 0,
  holder text,
  lease_until timestamptz,
  updated_at timestamptz not null default now(),
  constraint last_id_is_nonnegative check (last_id >= 0)
);
