-- The foreign key to step_states also ties a task to its run and flow; separate keys to runs
-- and flows would only add two lookups to every task inserted (a third of the insert's cost).
create table pgflow.step_tasks (
  flow_slug text not null,
  run_id uuid not null,
  step_slug text not null,
  message_id bigint,
  task_index int not null default 0,
  status text not null default 'queued',
  attempts_count int not null default 0,
  error_message text,
  output jsonb,
  queued_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  last_worker_id uuid references pgflow.workers (worker_id) on delete set null,
  requeued_count int not null default 0,
  last_requeued_at timestamptz,
  permanently_stalled_at timestamptz,
  primary key (run_id, step_slug, task_index),
  foreign key (run_id, step_slug) references pgflow.step_states (run_id, step_slug),
  constraint valid_status
    check (status in ('queued', 'started', 'completed', 'failed', 'cancelled', 'skipped')),
  constraint task_index_is_nonnegative check (task_index >= 0),
  constraint attempts_count_nonnegative check (attempts_count >= 0),
  constraint requeued_count_is_nonnegative check (requeued_count >= 0),
  constraint output_valid_only_for_completed check (output is null or status in ('completed', 'failed')),
  constraint completed_at_or_failed_at check (num_nonnulls(completed_at, failed_at) <= 1),
  constraint started_at_is_after_queued_at check (started_at is null or started_at >= queued_at),
  constraint completed_at_is_after_queued_at check (completed_at is null or completed_at >= queued_at),
  constraint failed_at_is_after_queued_at check (failed_at is null or failed_at >= queued_at),
  constraint completed_at_is_after_started_at
    check (completed_at is null or started_at is null or completed_at >= started_at),
  constraint failed_at_is_after_started_at
    check (failed_at is null or started_at is null or failed_at >= started_at)
);
-- tasks by message id (message ids are per queue, and a queue is per flow)
create index step_tasks_message_idx on pgflow.step_tasks (flow_slug, message_id);
-- started tasks by worker
create index step_tasks_worker_idx on pgflow.step_tasks (last_worker_id) where status = 'started';
-- started tasks by age, for stalled-task recovery
create index step_tasks_started_at_idx on pgflow.step_tasks (started_at) where status = 'started';
-- tasks the stalled-task sweep gave up on, for the worker that ran it to report
create index step_tasks_stalled_idx on pgflow.step_tasks (permanently_stalled_at)
  where permanently_stalled_at is not null;
