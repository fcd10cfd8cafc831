create or replace function pgflow.start_ready_steps(run_id uuid)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run_id uuid := start_ready_steps.run_id;
  v_flow text;
  v_step record;
  v_msg_ids bigint[];
  v_any boolean := false;
begin
  select r.flow_slug into v_flow from pgflow.runs r
   where r.run_id = v_run_id and r.status = 'started';
  if v_flow is null then
    return;
  end if;

  for v_step in
    with started as (
      update pgflow.step_states ss
         set status = 'started', started_at = now(), remaining_tasks = ss.initial_tasks
       where ss.run_id = v_run_id and ss.status = 'created' and ss.remaining_deps = 0
         and ss.initial_tasks > 0
      returning ss.step_slug, ss.initial_tasks, ss.remaining_deps, ss.started_at
    )
    select st.*, s.step_index, coalesce(s.opt_start_delay, 0) as start_delay
      from started st join pgflow.steps s on s.flow_slug = v_flow and s.step_slug = st.step_slug
     order by s.step_index
  loop
    perform pgflow._emit(v_run_id, 'step:' || v_step.step_slug || ':started', jsonb_build_object(
      'event_type', 'step:started',
      'run_id', v_run_id,
      'step_slug', v_step.step_slug,
      'status', 'started',
      'started_at', v_step.started_at,
      'remaining_tasks', v_step.initial_tasks,
      'remaining_deps', v_step.remaining_deps));

    -- message ids come from the queue's identity sequence in insertion order, so the n-th
    -- smallest id belongs to task n
    v_msg_ids := pgflow._send_messages(
      v_flow,
      array(
        select jsonb_build_object('flow_slug', v_flow, 'run_id', v_run_id,
                                  'step_slug', v_step.step_slug, 'task_index', i)
          from generate_series(0, v_step.initial_tasks - 1) i
         order by i),
      v_step.start_delay);

    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
    select v_flow, v_run_id, v_step.step_slug, (m.ord - 1)::int, m.id
      from unnest(v_msg_ids) with ordinality as m(id, ord);
    v_any := v_any or v_step.start_delay = 0;
  end loop;

  if v_any then
    perform pgflow._notify_tasks(v_flow);
  end if;
end;
$$;
