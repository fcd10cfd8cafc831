-- Run, step and task events, kept so that a relay can deliver them to event sinks at least once,
-- in order per run, and resume after a crash (our addition; see docs/events.md). Written by
-- pgflow._store_event when events are on, read in id order by the relaying worker, deleted by
-- prune_data_older_than. Within one run, ids follow commit order: every writer of a run's events
-- holds the run's row lock until it commits.
create table pgflow.events (
  id bigint generated always as identity primary key,
  run_id uuid not null,
  flow_slug text not null,
  event_type text not null,
  payload jsonb not null,
  created_at timestamptz not null default now()
);
