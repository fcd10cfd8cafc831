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
