-- One row per ended attempt of a task (our addition): when it started and ended, which worker
-- ran it, how it ended and, for a failure, its error and the handler's traceback. Written by
-- whatever ends the attempt, in the same transaction: complete_task, fail_task, report_tasks and
-- report_and_claim (the report), requeue_stalled_tasks (no result in time), and the cancellation
-- or skipping of a task whose attempt was still running. An attempt given back unstarted
-- (release_tasks) is not counted, so it has no row; a late, duplicate or stale result changes
-- nothing, so it adds none. Deleted with its run (prune_data_older_than, delete_flow_and_data).
--
-- attempt is the task's attempts_count while the attempt ran (1 for the first). outcome:
--   completed       the handler's result was stored
--   failed          the handler raised, or its input or output could not be used
--   timed_out       the handler ran longer than its step's timeout (the worker reported it)
--   worker_stopped  the worker stopped (its grace period ended) before the handler finished
--   stalled         no result within the step's timeout + 30 s: its worker is presumed dead
--   cancelled       the task was cancelled or skipped while the attempt ran (its run failed or
--                   was cancelled, or its step was skipped)
-- Workers bound tracebacks (16 KiB) and redact passwords before sending them; the table takes
-- what a caller of fail_task gives.
--
-- No foreign keys: a key to step_tasks would cost a lookup per row written on the report's hot
-- path, and the rows go exactly when their run goes. worker_id is not a key to workers either:
-- workers are pruned on their own schedule, and the attempt keeps saying who ran it.
-- The primary key serves every read (a run's attempts, a task's) and the deletes by run; no
-- other index is kept, so a report pays for one index entry per attempt.
create table pgflow.task_attempts (
  run_id uuid not null,
  step_slug text not null,
  task_index int not null,
  attempt int not null,
  flow_slug text not null,
  worker_id uuid,
  started_at timestamptz,
  ended_at timestamptz not null,
  outcome text not null,
  error_message text,
  traceback text,
  primary key (run_id, step_slug, task_index, attempt),
  constraint attempt_is_positive check (attempt >= 1),
  constraint outcome_is_valid
    check (outcome in ('completed', 'failed', 'timed_out', 'worker_stopped', 'stalled', 'cancelled'))
);
