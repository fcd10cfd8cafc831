-- Scratch rows of claim_tasks, held in an array of this type (owned by the schema owner)
-- rather than in a session temp table, which a caller could create first.
create type pgflow._claim_item as (
  msg_id bigint, run_id uuid, step_slug text, task_index int, attempt int, step_type text,
  deps_count int, payload text
);
