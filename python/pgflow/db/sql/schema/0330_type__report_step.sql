-- Scratch rows of report_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._report_step as (
  run_id uuid, step_slug text, flow_slug text, step_type text, initial_tasks int
);
