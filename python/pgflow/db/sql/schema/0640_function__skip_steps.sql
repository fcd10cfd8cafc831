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
