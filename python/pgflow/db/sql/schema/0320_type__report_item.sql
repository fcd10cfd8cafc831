-- Scratch rows of report_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._report_item as (
  ord int, run_id uuid, step_slug text, task_index int, output jsonb, error_message text,
  flow_slug text, message_id bigint, bulk boolean
);
