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
