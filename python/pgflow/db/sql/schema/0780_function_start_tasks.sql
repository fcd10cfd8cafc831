-- Starts the queued tasks behind the given messages (of runs and steps still started) for a
-- worker, hides their messages for the step's timeout + 2 s, and returns each task's input. An
-- unknown worker violates step_tasks_last_worker_id_fkey, as in pgflow.
create or replace function pgflow.start_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
returns setof pgflow.step_task_record
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := start_tasks.flow_slug;
  v_runs uuid[];
  v_steps text[];
  v_indexes int[];
  v_ids bigint[];
  v_offsets int[];
begin
  with claimable as (
    -- one index lookup per message whatever the statistics say (offset 0 keeps the planner
    -- from reading every task of a large step and filtering on the message ids)
    select t.run_id, t.step_slug, t.task_index
      from unnest(start_tasks.msg_ids) as m(id)
      cross join lateral (
        select t.* from pgflow.step_tasks t
         where t.flow_slug = v_slug and t.message_id = m.id and t.status = 'queued' offset 0
      ) x
      join pgflow.step_tasks t
        on t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index
      join pgflow.runs r on r.run_id = t.run_id
      join pgflow.step_states ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
     where r.status = 'started' and ss.status = 'started'
     for update of t
  ), claimed as (
    update pgflow.step_tasks t
       -- never before the task was queued: a claim whose transaction began before the retry
       -- that queued the task committed would otherwise date the start earlier
       set status = 'started', attempts_count = t.attempts_count + 1,
           started_at = greatest(now(), t.queued_at),
           last_worker_id = start_tasks.worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.run_id, t.step_slug, t.task_index, t.message_id
  )
  select array_agg(c.run_id order by c.message_id), array_agg(c.step_slug order by c.message_id),
         array_agg(c.task_index order by c.message_id), array_agg(c.message_id order by c.message_id),
         array_agg(coalesce(s.opt_timeout, f.opt_timeout) + 2 order by c.message_id)
    into v_runs, v_steps, v_indexes, v_ids, v_offsets
    from claimed c
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug
    join pgflow.flows f on f.flow_slug = v_slug;
  if v_ids is null then
    return;
  end if;

  -- the message stays hidden for as long as the handler may run, plus a margin; done as its own
  -- statement so that it really runs
  perform pgflow.set_vt_batch(v_slug, v_ids, v_offsets);

  return query
  select v_slug,
         c.run_id,
         c.step_slug,
         case
           when s.step_type = 'map' and s.deps_count = 0 then r.input -> c.task_index
           when s.step_type = 'map' then (
             select ps.output -> c.task_index
               from pgflow.deps d
               join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
              where d.flow_slug = v_slug and d.step_slug = c.step_slug)
           when s.deps_count = 0 then '{}'::jsonb
           else coalesce((
             select jsonb_object_agg(d.dep_slug, ps.output)
               from pgflow.deps d
               join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
              where d.flow_slug = v_slug and d.step_slug = c.step_slug and ps.status = 'completed'),
             '{}'::jsonb)
         end,
         c.message_id,
         c.task_index,
         case when s.step_type = 'single' and s.deps_count = 0 then r.input end
    from unnest(v_runs, v_steps, v_indexes, v_ids) as c(run_id, step_slug, task_index, message_id)
    join pgflow.runs r on r.run_id = c.run_id
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug
   order by c.message_id;
end;
$$;
