-- Attempts and tracebacks (our addition): pgflow.task_attempts keeps one row per ended attempt of
-- a task (start, end, worker, outcome, error, the handler's traceback), written in the same
-- transaction by whatever ends the attempt, and deleted with its run. fail_task, report_tasks
-- and report_and_claim take the handler's traceback and how the attempt ended.

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

revoke all on table pgflow.task_attempts from public;

-- the forms without tracebacks and outcomes give way to the ones with them (a call with the old
-- arguments reaches the new form through its defaults)
drop function pgflow.fail_task(uuid, text, int, text, int, text);
drop function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[], text[]);
drop function pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[], int, text[]);

create or replace function pgflow.delete_flow_and_data(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  -- through the runs' flow index and the attempts' primary key (task_attempts has no index on
  -- flow_slug: the hot path would pay for it at every attempt)
  delete from pgflow.task_attempts a
   where a.run_id in (select r.run_id from pgflow.runs r where r.flow_slug = p_flow_slug);
  delete from pgflow.step_tasks t where t.flow_slug = p_flow_slug;
  delete from pgflow.step_states ss where ss.flow_slug = p_flow_slug;
  delete from pgflow.runs r where r.flow_slug = p_flow_slug;
  delete from pgflow.deps d where d.flow_slug = p_flow_slug;
  delete from pgflow.steps s where s.flow_slug = p_flow_slug;
  delete from pgflow.flows f where f.flow_slug = p_flow_slug;
  if exists (select 1 from pgmq.meta m where m.queue_name = lower(p_flow_slug)) then
    perform pgmq.drop_queue(lower(p_flow_slug));
  end if;
end;
$$;

-- Cancels every open (queued or started) task of a run and archives their messages. A started
-- task's attempt ends here: it is recorded as cancelled, saying why (the run is already failed or
-- cancelled when this runs).
create or replace function pgflow._cancel_open_tasks(p_run_id uuid, p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_msgs bigint[];
begin
  -- never before the attempt's start: a claim that committed while this transaction waited for
  -- the run's lock started the task after this transaction's now()
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome, error_message)
  select t.run_id, t.step_slug, t.task_index, t.attempts_count, t.flow_slug, t.last_worker_id,
         t.started_at, greatest(now(), t.started_at), 'cancelled',
         case when r.status = 'cancelled' then 'the run was cancelled'
              else 'the run failed: ' || coalesce(r.error_message, 'no reason given') end
    from pgflow.step_tasks t join pgflow.runs r on r.run_id = t.run_id
   where t.run_id = p_run_id and t.status = 'started';

  with cancelled as (
    update pgflow.step_tasks t set status = 'cancelled'
     where t.run_id = p_run_id and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(c.message_id) into v_msgs from cancelled c where c.message_id is not null;
  perform pgflow._archive_messages(p_flow_slug, v_msgs);
end;
$$;

-- Marks the given steps skipped (reason per step), skips their open tasks, and takes them off
-- the run's remaining steps. Children outside the set lose one remaining dependency each; a
-- dependent map whose task count is still unknown learns that it has none. A step skipped
-- because its handler failed keeps p_error_message (the task's error), as in pgflow, and its
-- step:skipped event carries it. A started task's attempt ends here: it is recorded as cancelled.
create or replace function pgflow._skip_steps(
  p_run_id uuid, p_steps text[], p_reasons text[], p_error_message text default null
)
returns int
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
  v_count int;
  v_msgs bigint[];
  v_state record;
begin
  select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;

  with skipped as (
    update pgflow.step_states ss
       set status = 'skipped', skip_reason = x.reason, skipped_at = now(), remaining_tasks = null,
           error_message = case when x.reason = 'handler_failed' then p_error_message end
      from unnest(p_steps, p_reasons) as x(slug, reason)
     where ss.run_id = p_run_id and ss.step_slug = x.slug and ss.status in ('created', 'started')
    returning ss.step_slug
  )
  select count(*) into v_count from skipped;
  if v_count = 0 then
    return 0;
  end if;

  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome, error_message)
  select t.run_id, t.step_slug, t.task_index, t.attempts_count, t.flow_slug, t.last_worker_id,
         t.started_at, greatest(now(), t.started_at), 'cancelled',
         format('the step was skipped (%s)', x.reason)
    from pgflow.step_tasks t
    join unnest(p_steps, p_reasons) as x(slug, reason) on x.slug = t.step_slug
   where t.run_id = p_run_id and t.status = 'started';

  with open_tasks as (
    update pgflow.step_tasks t set status = 'skipped'
     where t.run_id = p_run_id and t.step_slug = any (p_steps) and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(o.message_id) into v_msgs from open_tasks o where o.message_id is not null;
  perform pgflow._archive_messages(v_flow, v_msgs);

  update pgflow.step_states child
     set remaining_deps = child.remaining_deps - e.n,
         initial_tasks = case when s.step_type = 'map' and child.initial_tasks is null then 0
                              else child.initial_tasks end
    from (
      select d.step_slug, count(*)::int as n
        from pgflow.deps d
       where d.flow_slug = v_flow and d.dep_slug = any (p_steps) and not (d.step_slug = any (p_steps))
       group by d.step_slug
    ) e, pgflow.steps s
   where child.run_id = p_run_id and child.step_slug = e.step_slug and child.status = 'created'
     and s.flow_slug = v_flow and s.step_slug = e.step_slug;

  update pgflow.runs r set remaining_steps = r.remaining_steps - v_count where r.run_id = p_run_id;

  for v_state in
    select ss.step_slug, ss.skip_reason, ss.skipped_at, ss.error_message
      from pgflow.step_states ss join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
     where ss.run_id = p_run_id and ss.step_slug = any (p_steps) and ss.status = 'skipped'
     order by s.step_index
  loop
    perform pgflow._emit(p_run_id, 'step:' || v_state.step_slug || ':skipped', jsonb_build_object(
      'event_type', 'step:skipped',
      'run_id', p_run_id,
      'flow_slug', v_flow,
      'step_slug', v_state.step_slug,
      'status', 'skipped',
      'skip_reason', v_state.skip_reason,
      'skipped_at', v_state.skipped_at)
      || case when v_state.error_message is not null
              then jsonb_build_object('error_message', v_state.error_message) else '{}'::jsonb end);
  end loop;
  return v_count;
end;
$$;

-- Our form: attempt is the attempt number the claim returned; a result for an attempt that is
-- no longer current changes nothing (NULL: any attempt, as in the contract's form). A result that
-- applies ends the attempt: it is recorded in task_attempts.
create or replace function pgflow.complete_task(
  run_id uuid, step_slug text, task_index int, output jsonb, attempt int
)
returns setof pgflow.step_tasks
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_state pgflow.step_states;
  v_task pgflow.step_tasks;
  v_step pgflow.steps;
  v_error text;
begin
  v_task := pgflow._lock_reported_task(complete_task.run_id, complete_task.step_slug,
                                       complete_task.task_index, complete_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;
  select s.* into v_step from pgflow.steps s
   where s.flow_slug = v_task.flow_slug and s.step_slug = complete_task.step_slug;

  if v_step.step_type = 'single'
     and jsonb_typeof(complete_task.output) is distinct from 'array'
     and exists (
       select 1 from pgflow.deps d
         join pgflow.steps cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
         join pgflow.step_states css on css.run_id = complete_task.run_id and css.step_slug = d.step_slug
        where d.flow_slug = v_task.flow_slug and d.dep_slug = complete_task.step_slug
          and cs.step_type = 'map' and css.initial_tasks is null) then
    v_error := format('[TYPE_VIOLATION] Produced %s instead of array',
                      coalesce(jsonb_typeof(complete_task.output), 'null'));
    update pgflow.step_tasks t
       set status = 'failed', failed_at = now(), error_message = v_error, output = complete_task.output
     where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
       and t.task_index = complete_task.task_index;
    insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                      started_at, ended_at, outcome, error_message)
    values (v_task.run_id, v_task.step_slug, v_task.task_index, v_task.attempts_count, v_task.flow_slug,
            v_task.last_worker_id, v_task.started_at, now(), 'failed', v_error);
    perform pgflow._archive_messages(v_task.flow_slug, array[v_task.message_id]);
    perform pgflow._fail_step(complete_task.run_id, complete_task.step_slug, v_error);
    return query select t.* from pgflow.step_tasks t
      where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
        and t.task_index = complete_task.task_index;
    return;
  end if;

  update pgflow.step_tasks t
     set status = 'completed', completed_at = now(), output = complete_task.output
   where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
     and t.task_index = complete_task.task_index;
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome)
  values (v_task.run_id, v_task.step_slug, v_task.task_index, v_task.attempts_count, v_task.flow_slug,
          v_task.last_worker_id, v_task.started_at, now(), 'completed');
  perform pgflow._archive_messages(v_task.flow_slug, array[v_task.message_id]);

  if v_step.step_type = 'single' then
    -- one task: the step completes with it, in one statement
    update pgflow.step_states ss
       set remaining_tasks = 0, status = 'completed', completed_at = now(), output = complete_task.output
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
    returning ss.* into v_state;
  else
    update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - 1
     where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug
    returning ss.* into v_state;
    if v_state.remaining_tasks = 0 then
      update pgflow.step_states ss
         set status = 'completed', completed_at = now(),
             output = (select jsonb_agg(t.output order by t.task_index)
                         from pgflow.step_tasks t
                        where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug)
       where ss.run_id = complete_task.run_id and ss.step_slug = complete_task.step_slug;
    end if;
  end if;

  if v_state.remaining_tasks = 0 then
    perform pgflow._after_step_completed(complete_task.run_id, complete_task.step_slug);
    perform pgflow._advance_run(complete_task.run_id);
  end if;

  return query select t.* from pgflow.step_tasks t
    where t.run_id = complete_task.run_id and t.step_slug = complete_task.step_slug
      and t.task_index = complete_task.task_index;
end;
$$;

-- Our form: see complete_task. `retry` (our addition) says what a failure that has attempts
-- left does: 'backoff' (the default, and NULL) queues the task again after the step's
-- exponential delay; 'now' queues it again without delay (a worker that stopped before its
-- task finished); 'never' fails the task at once, whatever attempts are left, and applies the
-- step's when_exhausted (a handler that raised pgflow.Fail, an input its handler cannot take).
-- The failure ends the attempt, recorded in task_attempts with `traceback` (ours: the handler's,
-- NULL when there is none) and `outcome` (ours: 'failed', the default and NULL; 'timed_out' for a
-- handler that ran past its timeout; 'worker_stopped' for one its worker stopped before it ended).
create or replace function pgflow.fail_task(
  run_id uuid, step_slug text, task_index int, error_message text, attempt int,
  retry text default null, traceback text default null, outcome text default null
)
returns setof pgflow.step_tasks
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_task pgflow.step_tasks;
  v_max_attempts int;
  v_base_delay int;
  v_delay int;
begin
  if fail_task.retry is not null and fail_task.retry not in ('backoff', 'now', 'never') then
    raise exception 'fail_task: retry must be ''backoff'', ''now'' or ''never'', got %',
      quote_literal(fail_task.retry) using errcode = '22023';
  end if;
  if fail_task.outcome is not null and fail_task.outcome not in ('failed', 'timed_out', 'worker_stopped') then
    raise exception 'fail_task: outcome must be ''failed'', ''timed_out'' or ''worker_stopped'', got %',
      quote_literal(fail_task.outcome) using errcode = '22023';
  end if;
  v_task := pgflow._lock_reported_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                       fail_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome, error_message, traceback)
  values (v_task.run_id, v_task.step_slug, v_task.task_index, v_task.attempts_count, v_task.flow_slug,
          v_task.last_worker_id, v_task.started_at, now(), coalesce(fail_task.outcome, 'failed'),
          fail_task.error_message, fail_task.traceback);

  select coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay)
    into v_max_attempts, v_base_delay
    from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_task.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts and fail_task.retry is distinct from 'never' then
    update pgflow.step_tasks t
       set status = 'queued', error_message = fail_task.error_message, queued_at = now(),
           started_at = null
     where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    v_delay := case when fail_task.retry = 'now' then 0
                    else pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count) end;
    perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[v_delay]);
    -- ours only (pgflow sends nothing on a retry, so realtime.send does not get it)
    if pgflow._events_on() then
      perform pgflow._store_event(fail_task.run_id, v_task.flow_slug, jsonb_build_object(
        'event_type', 'task:retrying',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'task_index', fail_task.task_index,
        'status', 'queued',
        'attempt', v_task.attempts_count,
        'error_message', fail_task.error_message,
        'retry_in_seconds', v_delay));
    end if;
  else
    perform pgflow._task_exhausted(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                   fail_task.error_message);
  end if;

  return query select t.* from pgflow.step_tasks t
    where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
      and t.task_index = fail_task.task_index;
end;
$$;

-- Batched worker call (our addition, contract section 9).
--
-- Reports many results in one transaction. Item i is a completion with outputs[i] when
-- error_messages[i] is NULL, otherwise a failure with that message. attempts[i], when given, is
-- the attempt the result answers (the attempt number the claim returned): a result for an
-- attempt that is no longer current (the task was requeued and claimed again meanwhile) changes
-- nothing. The outcome is the same as calling complete_task / fail_task for each item in order;
-- most of the work is done set by set:
--   * a run whose items are all completions of running tasks is completed set-based: tasks,
--     step counters, step outputs, dependents, newly ready steps and finished runs, with one
--     statement each for the whole batch. This is exact: nothing but a type violation or a
--     condition with when_unmet 'fail' could end such a run halfway through its items, and runs
--     where either could happen are left to the per-task path;
--   * for other runs, the completions that only count a map step down and come before anything
--     else of their run are applied set-based, the rest with complete_task / fail_task in order.
-- Late, duplicate, stale and foreign items are ignored one by one. Returns the number of items
-- that took effect. retry_modes[i], tracebacks[i] and outcomes[i], when given, are fail_task's
-- `retry`, `traceback` and `outcome` for a failure. Every item that takes effect ends its attempt
-- and records it in task_attempts (the set-based completions with one insert for the batch).
create or replace function pgflow.report_tasks(
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null,
  retry_modes text[] default null,
  tracebacks text[] default null,
  outcomes text[] default null
)
returns int
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_n int := coalesce(cardinality(report_tasks.run_ids), 0);
  v_applied int := 0;
  v_done int;
  v_items pgflow._report_item[];
  v_steps pgflow._report_step[];
  v_item record;
  v_flow_msgs record;
  v_events boolean := pgflow._events_enabled();
  v_state record;
  v_runs uuid[];
  v_general uuid[];
  v_run uuid;
begin
  if coalesce(cardinality(report_tasks.step_slugs), 0) <> v_n
     or coalesce(cardinality(report_tasks.task_indexes), 0) <> v_n
     or (report_tasks.outputs is not null and jsonb_typeof(report_tasks.outputs) <> 'array')
     or coalesce(jsonb_array_length(coalesce(report_tasks.outputs, '[]')), 0) not in (0, v_n)
     or (report_tasks.error_messages is not null and cardinality(report_tasks.error_messages) <> v_n)
     or (report_tasks.attempts is not null and cardinality(report_tasks.attempts) <> v_n)
     or (report_tasks.retry_modes is not null and cardinality(report_tasks.retry_modes) <> v_n)
     or (report_tasks.tracebacks is not null and cardinality(report_tasks.tracebacks) <> v_n)
     or (report_tasks.outcomes is not null and cardinality(report_tasks.outcomes) <> v_n) then
    raise exception 'report_tasks: run_ids, step_slugs, task_indexes, outputs (a JSON array), '
      'error_messages, attempts, retry_modes, tracebacks and outcomes must all have one element '
      'per item (% items)', v_n
      using errcode = '22023';
  end if;
  if v_n = 0 then
    return 0;
  end if;
  if v_n = 1 then
    -- one result (a chain of steps, say): the per-task function does the same work with less
    -- set-up, which keeps the latency of a hop low
    if report_tasks.error_messages is null or report_tasks.error_messages[1] is null then
      perform 1 from pgflow.complete_task(report_tasks.run_ids[1], report_tasks.step_slugs[1],
        report_tasks.task_indexes[1], coalesce(report_tasks.outputs -> 0, 'null'::jsonb),
        report_tasks.attempts[1]);
    else
      perform 1 from pgflow.fail_task(report_tasks.run_ids[1], report_tasks.step_slugs[1],
        report_tasks.task_indexes[1], report_tasks.error_messages[1], report_tasks.attempts[1],
        report_tasks.retry_modes[1], report_tasks.tracebacks[1], report_tasks.outcomes[1]);
    end if;
    return case when found then 1 else 0 end;
  end if;

  -- the usual lock order, and always the same order between concurrent batches
  perform 1 from pgflow.runs r
   where r.run_id in (select distinct x from unnest(report_tasks.run_ids) x)
   order by r.run_id
  for update;

  with items as (
    select i.ord::int as ord, i.run_id, i.step_slug, i.task_index,
           report_tasks.outputs -> (i.ord::int - 1) as output,
           report_tasks.error_messages[i.ord] as error_message,
           report_tasks.attempts[i.ord] as attempt
      from unnest(report_tasks.run_ids, report_tasks.step_slugs, report_tasks.task_indexes)
           with ordinality as i(run_id, step_slug, task_index, ord)
  ), facts as (
    select it.*, t.flow_slug, t.message_id, t.status as task_status, t.attempts_count,
           ss.status as step_status, ss.remaining_tasks, r.status as run_status, s.step_type,
           row_number() over (partition by it.run_id, it.step_slug, it.task_index order by it.ord) as dup_rank,
           row_number() over (partition by it.run_id, it.step_slug order by it.ord) as step_rank,
           -- a single step that feeds a map of unknown size must produce an array
           (s.step_type = 'single' and jsonb_typeof(it.output) is distinct from 'array' and exists (
              select 1 from pgflow.deps d
                join pgflow.steps cs on cs.flow_slug = d.flow_slug and cs.step_slug = d.step_slug
                join pgflow.step_states css on css.run_id = it.run_id and css.step_slug = d.step_slug
               where d.flow_slug = t.flow_slug and d.dep_slug = it.step_slug
                 and cs.step_type = 'map' and css.initial_tasks is null)) as may_violate,
           exists (select 1 from pgflow.steps fs where fs.flow_slug = t.flow_slug and fs.when_unmet = 'fail'
                     and (fs.required_input_pattern is not null or fs.forbidden_input_pattern is not null))
             as may_fail_condition
      from items it
      -- lookups by primary key, one per item (offset 0: see claim_tasks)
      left join lateral (
        select t.flow_slug, t.message_id, t.status, t.attempts_count from pgflow.step_tasks t
         where t.run_id = it.run_id and t.step_slug = it.step_slug and t.task_index = it.task_index
        offset 0
      ) t on true
      left join lateral (
        select ss.status, ss.remaining_tasks from pgflow.step_states ss
         where ss.run_id = it.run_id and ss.step_slug = it.step_slug
        offset 0
      ) ss on true
      left join pgflow.runs r on r.run_id = it.run_id
      left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = it.step_slug
  ), classified as (
    -- coalesce everywhere: an item whose task, step or run does not exist has NULL facts, and
    -- must count as not valid rather than be skipped by bool_and
    select f.*,
           coalesce(f.error_message is null and f.run_status = 'started' and f.step_status = 'started'
                    and f.task_status = 'started' and f.dup_rank = 1
                    and (f.attempt is null or f.attempt = f.attempts_count), false) as valid
      from facts f
  ), counted as (
    select c.*,
           coalesce(c.valid and c.step_type = 'map' and c.step_rank < c.remaining_tasks, false) as counts_down
      from classified c
  ), per_run as (
    select c.*,
           bool_and(c.valid and not coalesce(c.may_violate, true) and not coalesce(c.may_fail_condition, true))
             over (partition by c.run_id) as whole_run,
           min(case when not c.counts_down then c.ord end) over (partition by c.run_id) as first_other
      from counted c
  )
  select array_agg(row(p.ord, p.run_id, p.step_slug, p.task_index, p.output, p.error_message, p.flow_slug,
                       p.message_id,
                       coalesce(p.whole_run or (p.counts_down and p.ord < coalesce(p.first_other, 2147483647)),
                                false))::pgflow._report_item
                   order by p.ord)
    into v_items
    from per_run p;

  -- tasks, and their attempts ended (the update returns the attempt's start and worker, which a
  -- completion leaves as they are)
  with completed as (
    update pgflow.step_tasks t
       set status = 'completed', completed_at = now(), output = coalesce(x.output, 'null'::jsonb)
      from unnest(v_items) x
     where x.bulk and t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index
       and t.flow_slug = x.flow_slug and t.message_id = x.message_id
    returning t.run_id, t.step_slug, t.task_index, t.attempts_count, t.flow_slug, t.last_worker_id,
              t.started_at
  )
  insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                    started_at, ended_at, outcome)
  select c.run_id, c.step_slug, c.task_index, c.attempts_count, c.flow_slug, c.last_worker_id,
         c.started_at, now(), 'completed'
    from completed c;
  get diagnostics v_applied = row_count;

  for v_flow_msgs in
    select x.flow_slug, array_agg(x.message_id) as ids from unnest(v_items) x
     where x.bulk and x.message_id is not null group by x.flow_slug
  loop
    perform pgflow._archive_messages(v_flow_msgs.flow_slug, v_flow_msgs.ids);
  end loop;

  -- step counters; the steps that reach zero complete
  with counted as (
    update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - g.n
      from (select x.run_id, x.step_slug, count(*)::int as n from unnest(v_items) x
             where x.bulk group by x.run_id, x.step_slug) g
     where ss.run_id = g.run_id and ss.step_slug = g.step_slug
    returning ss.run_id, ss.step_slug, ss.flow_slug, ss.remaining_tasks, ss.initial_tasks
  )
  select coalesce(array_agg(row(c.run_id, c.step_slug, c.flow_slug, s.step_type, c.initial_tasks)::pgflow._report_step),
                  '{}')
    into v_steps
    from counted c join pgflow.steps s on s.flow_slug = c.flow_slug and s.step_slug = c.step_slug
   where c.remaining_tasks = 0;
  v_done := cardinality(v_steps);

  if v_done > 0 then
    update pgflow.step_states ss
       set status = 'completed', completed_at = now(),
           output = case
             when d.step_type = 'map' then (
               select jsonb_agg(t.output order by t.task_index) from pgflow.step_tasks t
                where t.run_id = d.run_id and t.step_slug = d.step_slug)
             else (select t.output from pgflow.step_tasks t
                    where t.run_id = d.run_id and t.step_slug = d.step_slug and t.task_index = 0) end
      from unnest(v_steps) d
     where ss.run_id = d.run_id and ss.step_slug = d.step_slug;

    -- dependents lose one dependency per completed parent; a dependent map learns its size
    update pgflow.step_states child
       set remaining_deps = child.remaining_deps - e.n,
           initial_tasks = coalesce(child.initial_tasks, e.map_size)
      from (
        select d.run_id, dep.step_slug, count(*)::int as n,
               max(case when cs.step_type <> 'map' then null
                        when d.step_type = 'map' then d.initial_tasks
                        when jsonb_typeof(ps.output) = 'array' then jsonb_array_length(ps.output)
                        else 0 end) as map_size
          from unnest(v_steps) d
          join pgflow.deps dep on dep.flow_slug = d.flow_slug and dep.dep_slug = d.step_slug
          join pgflow.steps cs on cs.flow_slug = dep.flow_slug and cs.step_slug = dep.step_slug
          join pgflow.step_states ps on ps.run_id = d.run_id and ps.step_slug = d.step_slug
         group by d.run_id, dep.step_slug
      ) e
     where child.run_id = e.run_id and child.step_slug = e.step_slug and child.status = 'created';

    update pgflow.runs r set remaining_steps = r.remaining_steps - g.n
      from (select d.run_id, count(*)::int as n from unnest(v_steps) d group by d.run_id) g
     where r.run_id = g.run_id;

    if v_events then
      for v_state in
        select ss.run_id, ss.step_slug, ss.output, ss.completed_at
          from unnest(v_steps) d
          join pgflow.step_states ss on ss.run_id = d.run_id and ss.step_slug = d.step_slug
          join pgflow.steps s on s.flow_slug = d.flow_slug and s.step_slug = d.step_slug
         order by d.run_id, s.step_index
      loop
        perform pgflow._emit(v_state.run_id, 'step:' || v_state.step_slug || ':completed', jsonb_build_object(
          'event_type', 'step:completed',
          'run_id', v_state.run_id,
          'step_slug', v_state.step_slug,
          'status', 'completed',
          'output', v_state.output,
          'completed_at', v_state.completed_at));
      end loop;
    end if;

    -- move the runs on: set by set where no ready step needs a condition check or has no tasks
    select array_agg(distinct d.run_id) into v_runs from unnest(v_steps) d;
    select array_agg(distinct ss.run_id) into v_general
      from pgflow.step_states ss
      join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
     where ss.run_id = any (v_runs) and ss.status = 'created' and ss.remaining_deps = 0
       and (ss.initial_tasks = 0 or s.required_input_pattern is not null
            or s.forbidden_input_pattern is not null);
    v_general := coalesce(v_general, '{}');
    foreach v_run in array v_general loop
      perform pgflow._advance_run(v_run);
    end loop;
    perform pgflow._advance_runs_bulk(
      array(select r from unnest(v_runs) r where not (r = any (v_general))), v_events);
  end if;

  for v_item in select x.* from unnest(v_items) x where not x.bulk order by x.ord loop
    if v_item.error_message is null then
      perform 1 from pgflow.complete_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                          coalesce(v_item.output, 'null'::jsonb),
                                          report_tasks.attempts[v_item.ord]);
    else
      perform 1 from pgflow.fail_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                      v_item.error_message, report_tasks.attempts[v_item.ord],
                                      report_tasks.retry_modes[v_item.ord],
                                      report_tasks.tracebacks[v_item.ord],
                                      report_tasks.outcomes[v_item.ord]);
    end if;
    if found then
      v_applied := v_applied + 1;
    end if;
  end loop;
  return v_applied;
end;
$$;

-- Batched worker call (our addition): report results and take the tasks they made ready, in one
-- round trip and one transaction.
--
-- Does what report_tasks does with the same arguments, then claims, for worker_id, up to qty
-- tasks of flow_slug that this very transaction queued for the reported runs (the tasks of steps
-- it started, visible at once: not delayed by a start delay). They are claims in every respect,
-- exactly as claim_tasks makes them: attempt counted, message hidden for the step's timeout + 2 s,
-- rows in claim_tasks' shape. No other worker ever sees them queued. Other workers are woken
-- (NOTIFY) only for the tasks left over. Claims nothing when qty is 0 or the worker is not
-- registered (the report still happens).
-- retry_modes, tracebacks, outcomes: as report_tasks'.
create or replace function pgflow.report_and_claim(
  flow_slug text,
  worker_id uuid,
  qty int,
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null,
  inline_array_limit int default 262144,
  retry_modes text[] default null,
  tracebacks text[] default null,
  outcomes text[] default null
)
returns table (
  kind text,
  msg_id bigint,
  run_id text,
  step_slug text,
  task_index int,
  attempt int,
  mode int,
  deps text[],
  payload text
)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := report_and_claim.flow_slug;
  v_flow pgflow.flows;
  v_wakeups text := current_setting('pgflow.wakeups', true);
  v_deferred text[];
  v_runs uuid[];
  v_msg_ids bigint[];
  v_steps text[];
  v_wake text;
begin
  if report_and_claim.qty is null or report_and_claim.qty < 0 then
    raise exception 'report_and_claim: qty must be 0 or more, got %',
      coalesce(report_and_claim.qty::text, 'NULL') using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    perform set_config('pgflow.wakeups', 'defer', true);
    perform set_config('pgflow.deferred_wakeups', '', true);
  end if;

  perform pgflow.report_tasks(report_and_claim.run_ids, report_and_claim.step_slugs,
                              report_and_claim.task_indexes, report_and_claim.outputs,
                              report_and_claim.error_messages, report_and_claim.attempts,
                              report_and_claim.retry_modes, report_and_claim.tracebacks,
                              report_and_claim.outcomes);

  select array_agg(distinct r) into v_runs from unnest(report_and_claim.run_ids) r;
  if report_and_claim.qty > 0 and v_runs is not null
     and exists (select 1 from pgflow.workers w where w.worker_id = report_and_claim.worker_id) then
    -- the tasks of the steps this transaction started (a step's started_at is its
    -- transaction's start), through the primary keys of the reported runs
    select array_agg(f.message_id order by f.message_id), array_agg(f.step_slug order by f.message_id)
      into v_msg_ids, v_steps
      from (
        select t.message_id, t.step_slug
          from pgflow.step_states ss
          join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
         where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
           and ss.started_at = now() and t.status = 'queued' and t.message_id is not null
         order by t.message_id
         limit report_and_claim.qty
      ) f;
    v_msg_ids := pgflow._hide_messages(v_slug, v_msg_ids, v_steps, v_flow.opt_timeout);
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    v_deferred := array(select distinct x from unnest(string_to_array(
      current_setting('pgflow.deferred_wakeups', true), ',')) x where x <> '');
    perform set_config('pgflow.wakeups', coalesce(v_wakeups, ''), true);
    perform set_config('pgflow.deferred_wakeups', '', true);
    foreach v_wake in array v_deferred loop
      -- wake the others only when something this transaction queued is still visible to them
      -- (when fewer tasks were hidden than asked for, the claim took all there were)
      if v_wake <> v_slug or (coalesce(cardinality(v_msg_ids), 0) >= report_and_claim.qty and exists (
           select 1 from pgflow.step_states ss
             join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
            where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
              and ss.started_at = now() and t.status = 'queued'
              and not (t.message_id = any (coalesce(v_msg_ids, '{}'))))) then
        perform pgflow._notify_tasks(v_wake);
      end if;
    end loop;
  end if;

  if v_msg_ids is null then
    return;
  end if;
  return query
  select * from pgflow._claim_messages(v_slug, report_and_claim.worker_id, v_msg_ids,
                                        report_and_claim.inline_array_limit);
end;
$$;

-- A task still started longer than its step's timeout + 30 s is taken to belong to a dead
-- worker: it goes back to the queue with its message visible at once. A task that has already
-- been requeued 3 times is marked permanently stalled and fails like a task whose attempts are
-- used up, so its run cannot hang forever (its permanently_stalled_at tells it apart). As in
-- pgflow, a requeued task forgets its start and worker, and the result counts only the tasks
-- requeued; the worker that runs the sweep finds the terminalized ones by permanently_stalled_at.
-- Either way the attempt ends, recorded in task_attempts as stalled.
create or replace function pgflow.requeue_stalled_tasks()
returns int
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_task record;
  v_count int := 0;
  v_current pgflow.step_tasks;
begin
  for v_task in
    select t.run_id, t.step_slug, t.task_index, t.flow_slug, t.message_id, t.requeued_count,
           coalesce(s.opt_timeout, f.opt_timeout) as timeout
      from pgflow.step_tasks t
      join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
      join pgflow.flows f on f.flow_slug = t.flow_slug
     where t.status = 'started'
       and t.started_at < now() - make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout) + 30)
     order by t.started_at
  loop
    -- lock in the usual order (run, then task) and look again: it may have finished meanwhile
    perform 1 from pgflow.runs r where r.run_id = v_task.run_id for update;
    select t.* into v_current from pgflow.step_tasks t
     where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index
    for update;
    continue when v_current.status <> 'started'
      or v_current.started_at >= now() - make_interval(secs => v_task.timeout + 30);

    insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug, worker_id,
                                      started_at, ended_at, outcome, error_message)
    values (v_current.run_id, v_current.step_slug, v_current.task_index, v_current.attempts_count,
            v_current.flow_slug, v_current.last_worker_id, v_current.started_at, now(), 'stalled',
            format('no result within the step''s timeout of %s s + 30 s: its worker is presumed dead',
                   v_task.timeout));

    if v_current.requeued_count >= 3 then
      update pgflow.step_tasks t set permanently_stalled_at = now()
       where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index;
      perform pgflow._task_exhausted(v_task.run_id, v_task.step_slug, v_task.task_index,
        format('Task stalled: it was started %s times and no worker finished it within its timeout of %s s',
               v_current.requeued_count + 1, v_task.timeout));
      continue;
    else
      update pgflow.step_tasks t
         set status = 'queued', requeued_count = t.requeued_count + 1, last_requeued_at = now(),
             queued_at = now(), started_at = null, last_worker_id = null
       where t.run_id = v_task.run_id and t.step_slug = v_task.step_slug and t.task_index = v_task.task_index;
      perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[0]);
      perform pgflow._notify_tasks(v_task.flow_slug);
    end if;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

-- Deletes what is older than the interval: finished runs with their step states, tasks, task
-- attempts and any of their messages still in a flow's queue; workers whose last heartbeat is older (a
-- crashed worker never stops, and goes all the same; a live one registers again at its next
-- heartbeat); archived messages; kept events (pgflow.events: those of the pruned runs, and any
-- other event as old). Returns what it deleted, per kind (pgflow's returns nothing).
create or replace function pgflow.prune_data_older_than(retention_interval interval)
returns jsonb
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_tasks int;
  v_attempts int;
  v_states int;
  v_workers int;
  v_events int;
  v_messages bigint := 0;
  v_n bigint;
  v_queue text;
  v_flow_msgs record;
  v_queued bigint := 0;
begin
  if retention_interval is null or retention_interval < interval '0' then
    raise exception 'retention_interval must be a non-negative interval, got %',
      coalesce(retention_interval::text, 'NULL') using errcode = '22023';
  end if;
  v_cutoff := now() - retention_interval;

  select array_agg(r.run_id) into v_runs from pgflow.runs r
   where r.status <> 'started' and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < v_cutoff;
  v_runs := coalesce(v_runs, '{}');

  for v_flow_msgs in
    select t.flow_slug, array_agg(t.message_id) as ids from pgflow.step_tasks t
     where t.run_id = any (v_runs) and t.message_id is not null
     group by t.flow_slug
  loop
    select count(*) into v_n from pgmq.delete(v_flow_msgs.flow_slug, v_flow_msgs.ids);
    v_queued := v_queued + v_n;
  end loop;

  delete from pgflow.task_attempts a where a.run_id = any (v_runs);
  get diagnostics v_attempts = row_count;
  delete from pgflow.step_tasks t where t.run_id = any (v_runs);
  get diagnostics v_tasks = row_count;
  delete from pgflow.step_states ss where ss.run_id = any (v_runs);
  get diagnostics v_states = row_count;
  delete from pgflow.runs r where r.run_id = any (v_runs);

  delete from pgflow.events e where e.created_at < v_cutoff;
  get diagnostics v_events = row_count;

  delete from pgflow.workers w where w.last_heartbeat_at < v_cutoff;
  get diagnostics v_workers = row_count;

  for v_queue in select f.flow_slug from pgflow.flows f loop
    continue when to_regclass(format('pgmq.%I', pgmq.format_table_name(v_queue, 'a'))) is null;
    execute format('delete from pgmq.%I where archived_at < $1', pgmq.format_table_name(v_queue, 'a'))
      using v_cutoff;
    get diagnostics v_n = row_count;
    v_messages := v_messages + v_n;
  end loop;

  return jsonb_build_object('runs', cardinality(v_runs), 'step_states', v_states, 'step_tasks', v_tasks,
                            'task_attempts', v_attempts,
                            'workers', v_workers, 'queued_messages', v_queued,
                            'archived_messages', v_messages, 'events', v_events);
end;
$$;

revoke all on function pgflow.fail_task(uuid, text, int, text, int, text, text, text) from public;
revoke all on function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[], text[], text[], text[])
  from public;
revoke all on function pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[], int,
                                              text[], text[], text[]) from public;

do $$
declare
  v_role text;
begin
  -- clients and workers read attempts (runs show, dashboards); workers write them only through
  -- the functions above
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant select on pgflow.task_attempts to %I', v_role);
  end loop;
  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.fail_task(uuid, text, int, text, int, text, text, text) to pgflow_worker;
    grant execute on function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[], text[], text[],
                                                  text[])
      to pgflow_worker;
    grant execute on function pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[],
                                                      int, text[], text[], text[])
      to pgflow_worker;
  end if;
end;
$$;
