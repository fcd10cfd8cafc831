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

-- The contract's form: the result applies to whichever attempt is current.
create or replace function pgflow.complete_task(run_id uuid, step_slug text, task_index int, output jsonb)
returns setof pgflow.step_tasks
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
  select * from pgflow.complete_task(complete_task.run_id, complete_task.step_slug,
                                     complete_task.task_index, complete_task.output, null::int);
$$;
