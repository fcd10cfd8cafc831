-- Scratch rows of _advance_runs_bulk, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._new_step as (
  flow_slug text, run_id uuid, step_slug text, initial_tasks int, remaining_deps int,
  started_at timestamptz, start_delay int, step_index int
);
