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
  constraint step_tasks_status_is_valid
    check (status in ('queued', 'started', 'completed', 'failed', 'cancelled', 'skipped')),
  constraint step_tasks_task_index_nonnegative check (task_index >= 0),
  constraint step_tasks_attempts_nonnegative check (attempts_count >= 0),
  constraint step_tasks_requeued_nonnegative check (requeued_count >= 0),
  constraint step_tasks_output_only_when_finished check (output is null or status in ('completed', 'failed'))
);
-- tasks by message id (message ids are per queue, and a queue is per flow)
create index step_tasks_message_idx on pgflow.step_tasks (flow_slug, message_id);
-- started tasks by worker
create index step_tasks_worker_idx on pgflow.step_tasks (last_worker_id) where status = 'started';
-- started tasks by age, for stalled-task recovery
create index step_tasks_started_at_idx on pgflow.step_tasks (started_at) where status = 'started';
