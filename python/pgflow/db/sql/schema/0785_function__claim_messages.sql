-- Starts the tasks of messages a claim has just read and hidden, and returns the rows of
-- claim_tasks (see there). Messages whose task can no longer run (a duplicate, a message for a
-- task that finished, was cancelled or does not exist) are archived, each returned as a row of
-- kind 'dead' with its msg_id. Called by
-- claim_tasks and report_and_claim only, with their owner's rights.
create or replace function pgflow._claim_messages(
  p_flow_slug text,
  p_worker_id uuid,
  p_msg_ids bigint[],
  p_inline_array_limit int
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
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := p_flow_slug;
  v_msg_ids bigint[] := p_msg_ids;
  v_dead bigint[];
  v_parent record;
  v_array jsonb;
  v_claims pgflow._claim_item[];
  v_sent_runs uuid[] := '{}';
  v_sent_steps text[] := '{}';
  v_has_maps boolean;
  v_has_roots boolean;
  v_has_deps boolean;
begin
  -- The claimed tasks are kept in an array of an owner-defined type, never in a session temp
  -- table: a caller could create such a table first (with a trigger) and have this security
  -- definer function run its code with the owner's rights.
  with claimable as (
    -- one index lookup per message whatever the statistics say (offset 0 keeps the planner
    -- from turning the lookups into a hash join over the whole table after a burst of inserts)
    select t.run_id, t.step_slug, t.task_index
      from unnest(v_msg_ids) as m(id)
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
           last_worker_id = p_worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.message_id, t.run_id, t.step_slug, t.task_index, t.attempts_count
  )
  -- what the batch holds decides which of the queries below are needed at all
  select coalesce(array_agg(row(c.message_id, c.run_id, c.step_slug, c.task_index, c.attempts_count,
                                s.step_type, s.deps_count, null)::pgflow._claim_item
                            order by c.message_id), '{}'),
         coalesce(bool_or(s.step_type = 'map' and s.deps_count = 1), false),
         coalesce(bool_or(s.deps_count = 0), false),
         coalesce(bool_or(s.step_type = 'single' and s.deps_count > 0), false)
    into v_claims, v_has_maps, v_has_roots, v_has_deps
    from claimed c
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug;

  -- messages that can never be used again: their task finished, was cancelled, or is gone
  if cardinality(v_claims) < cardinality(v_msg_ids) then
    select array_agg(m.id) into v_dead
      from unnest(v_msg_ids) m(id)
     where not exists (select 1 from unnest(v_claims) c where c.msg_id = m.id)
       and not exists (
         select 1 from pgflow.step_tasks t
          where t.flow_slug = v_slug and t.message_id = m.id and t.status in ('queued', 'started'));
    perform pgflow._archive_messages(v_slug, v_dead);
    -- one row of kind 'dead' per archived message, so that the worker can say so
    return query
    select 'dead'::text, d.id, null::text, null::text, null::int, null::int, null::int,
           null::text[], null::text
      from unnest(v_dead) d(id);
  end if;

  -- parents of dependent maps: small arrays go once as a blob and are sliced by the worker;
  -- the elements of large ones are cut out here from one in-memory copy of the array
  for v_parent in
    select c.run_id, d.dep_slug, max(pg_column_size(ps.output)) as size,
           array_agg(distinct c.step_slug) as children
      from unnest(v_claims) c
      join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
      join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
     where v_has_maps and c.step_type = 'map' and c.deps_count = 1
     group by c.run_id, d.dep_slug
  loop
    if v_parent.size <= p_inline_array_limit then
      v_sent_runs := v_sent_runs || v_parent.run_id;
      v_sent_steps := v_sent_steps || v_parent.dep_slug;
      return query
      select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
             null::text[], ps.output::text
        from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
    else
      -- `|| '[]'` makes one decompressed copy; element lookups on the stored (compressed)
      -- value would decompress the whole array for every element
      select ps.output || '[]'::jsonb into v_array from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
      v_claims := array(
        select row(c.msg_id, c.run_id, c.step_slug, c.task_index, c.attempt, c.step_type, c.deps_count,
                   case when c.run_id = v_parent.run_id and c.step_slug = any (v_parent.children)
                        then coalesce((v_array -> c.task_index)::text, 'null')
                        else c.payload end)::pgflow._claim_item
          from unnest(v_claims) with ordinality as c
         order by c.ordinality);
    end if;
  end loop;

  return query
  with step_deps as (
    -- the dependencies of the steps claimed only (a flow may have many steps)
    select c.step_slug,
           coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
                      where d.flow_slug = v_slug and d.step_slug = c.step_slug), '{}'::text[]) as deps
      from (select distinct x.step_slug from unnest(v_claims) x) c
  )
  select 'task'::text, c.msg_id, c.run_id::text, c.step_slug, c.task_index, c.attempt,
         case when c.payload is not null then 3
              when c.step_type = 'map' then 2
              when c.deps_count = 0 then 0
              else 1 end,
         sd.deps,
         c.payload
    from unnest(v_claims) c
    join step_deps sd on sd.step_slug = c.step_slug
   order by c.msg_id;

  -- the run input, once per run, for root steps
  if v_has_roots then
    return query
    select 'blob'::text, null::bigint, r.run_id::text, ''::text, null::int, null::int, null::int,
           null::text[], r.input::text
      from pgflow.runs r
     where r.run_id in (select c.run_id from unnest(v_claims) c where c.deps_count = 0);
  end if;

  -- dependency outputs of dependent single steps, once per (run, dependency) and call
  if v_has_deps then
    return query
    select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
           null::text[], ps.output::text
      from pgflow.step_states ps
     where ps.status = 'completed'
       and (ps.run_id, ps.step_slug) in (
         select distinct c.run_id, d.dep_slug
           from unnest(v_claims) c
           join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
          where c.step_type = 'single' and c.deps_count > 0)
       and not exists (
         select 1 from unnest(v_sent_runs, v_sent_steps) as sent(run_id, step_slug)
          where sent.run_id = ps.run_id and sent.step_slug = ps.step_slug);
  end if;
end;
$$;
