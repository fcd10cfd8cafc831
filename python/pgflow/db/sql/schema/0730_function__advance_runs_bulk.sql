-- Starts every ready step of the given runs and completes the runs that have nothing left, set
-- by set. Only for runs whose ready steps need no condition check and have tasks: the caller
-- sends every other run through _advance_run.
create or replace function pgflow._advance_runs_bulk(p_run_ids uuid[], p_events boolean)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_new pgflow._new_step[];
  v_group record;
  v_ids bigint[];
  v_state record;
  v_run pgflow.runs;
  v_wake text[];
begin
  with started as (
    update pgflow.step_states ss
       set status = 'started', started_at = now(), remaining_tasks = ss.initial_tasks
      from pgflow.runs r
     where ss.run_id = any (p_run_ids) and r.run_id = ss.run_id and r.status = 'started'
       and ss.status = 'created' and ss.remaining_deps = 0 and ss.initial_tasks > 0
    returning ss.flow_slug, ss.run_id, ss.step_slug, ss.initial_tasks, ss.remaining_deps, ss.started_at
  )
  select coalesce(array_agg(row(st.flow_slug, st.run_id, st.step_slug, st.initial_tasks, st.remaining_deps,
                                st.started_at, coalesce(s.opt_start_delay, 0), s.step_index)::pgflow._new_step),
                  '{}')
    into v_new
    from started st join pgflow.steps s on s.flow_slug = st.flow_slug and s.step_slug = st.step_slug;

  -- one message batch per flow and start delay; ids follow insertion order
  for v_group in
    select n.flow_slug, n.start_delay from unnest(v_new) n group by n.flow_slug, n.start_delay
  loop
    v_ids := pgflow._send_messages(
      v_group.flow_slug,
      array(
        select jsonb_build_object('flow_slug', n.flow_slug, 'run_id', n.run_id,
                                  'step_slug', n.step_slug, 'task_index', i)
          from unnest(v_new) n, generate_series(0, n.initial_tasks - 1) i
         where n.flow_slug = v_group.flow_slug and n.start_delay = v_group.start_delay
         order by n.run_id, n.step_slug, i),
      v_group.start_delay);
    insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
    select t.flow_slug, t.run_id, t.step_slug, t.i, v_ids[t.ord]
      from (
        select n.flow_slug, n.run_id, n.step_slug, i,
               row_number() over (order by n.run_id, n.step_slug, i) as ord
          from unnest(v_new) n, generate_series(0, n.initial_tasks - 1) i
         where n.flow_slug = v_group.flow_slug and n.start_delay = v_group.start_delay
      ) t;
    if v_group.start_delay = 0 then
      v_wake := v_wake || v_group.flow_slug;
    end if;
  end loop;

  if p_events then
    for v_state in select n.* from unnest(v_new) n order by n.run_id, n.step_index loop
      perform pgflow._emit(v_state.run_id, 'step:' || v_state.step_slug || ':started', jsonb_build_object(
        'event_type', 'step:started',
        'run_id', v_state.run_id,
        'step_slug', v_state.step_slug,
        'status', 'started',
        'started_at', v_state.started_at,
        'remaining_tasks', v_state.initial_tasks,
        'remaining_deps', v_state.remaining_deps));
    end loop;
  end if;

  for v_run in
    update pgflow.runs r
       set status = 'completed', completed_at = now(),
           output = (
             select jsonb_object_agg(ss.step_slug, ss.output)
               from pgflow.step_states ss
              where ss.run_id = r.run_id and ss.status = 'completed'
                and not exists (
                  select 1 from pgflow.deps d where d.flow_slug = ss.flow_slug and d.dep_slug = ss.step_slug))
     where r.run_id = any (p_run_ids) and r.status = 'started' and r.remaining_steps = 0
    returning r.*
  loop
    if p_events then
      perform pgflow._emit(v_run.run_id, 'run:completed', jsonb_build_object(
        'event_type', 'run:completed',
        'run_id', v_run.run_id,
        'flow_slug', v_run.flow_slug,
        'status', 'completed',
        'output', v_run.output,
        'completed_at', v_run.completed_at));
    end if;
  end loop;

  perform pgflow._notify_tasks(w) from (select distinct x as w from unnest(v_wake) x) f;
end;
$$;
