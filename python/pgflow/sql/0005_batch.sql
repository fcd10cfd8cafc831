-- Batched worker calls (our addition, contract section 9): claim many tasks in one round trip,
-- and report many results in one call and one transaction. The outcome is the same as calling
-- start_tasks / complete_task / fail_task one by one in the given order.

-- Claims up to qty visible tasks of a flow in one round trip: reads their messages (hiding each
-- for its step's timeout + 2 s), starts the tasks, and returns what a worker needs to build the
-- handler inputs, as raw JSON text. Two kinds of rows:
--   kind 'task': msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload
--       mode 0: input is the run input (blob run_id + '')
--       mode 1: input is {dep: output} of the deps listed (blobs run_id + dep; a dep without a
--               blob was skipped and is left out)
--       mode 2: input is element task_index of the array in blob run_id + deps[1] (or of the run
--               input when deps is empty)
--       mode 3: input is payload itself (an element of a large parent array, cut out here so the
--               whole array is not sent for every batch)
--   kind 'blob': run_id, step_slug ('' for the run input), payload: each blob once per call.
-- Messages whose task can no longer run (finished, cancelled, or gone) are archived.
create or replace function pgflow.claim_tasks(
  flow_slug text,
  worker_id uuid,
  qty int,
  inline_array_limit int default 262144
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
set search_path = ''
as $$
declare
  v_slug text := claim_tasks.flow_slug;
  v_flow pgflow.flows;
  v_msg_ids bigint[];
  v_dead bigint[];
  v_parent record;
  v_array jsonb;
  v_claimed int;
begin
  if claim_tasks.qty is null or claim_tasks.qty < 1 then
    raise exception 'claim_tasks: qty must be 1 or more, got %', coalesce(claim_tasks.qty::text, 'NULL')
      using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;
  if claim_tasks.worker_id is null
     or not exists (select 1 from pgflow.workers w where w.worker_id = claim_tasks.worker_id) then
    raise exception 'worker % is not registered; insert its pgflow.workers row before claiming tasks',
      coalesce(claim_tasks.worker_id::text, 'NULL') using errcode = '22023';
  end if;

  execute format(
    'with picked as (
       select q.msg_id, q.message ->> ''step_slug'' as step_slug
         from pgmq.%1$I q
        where q.vt <= clock_timestamp()
        order by q.msg_id
        limit $1
        for update skip locked
     ), hidden as (
       update pgmq.%1$I q
          set vt = clock_timestamp() + make_interval(secs => coalesce(s.opt_timeout, $2) + 2),
              read_ct = q.read_ct + 1,
              last_read_at = clock_timestamp()
         from picked p
         left join pgflow.steps s on s.flow_slug = $3 and s.step_slug = p.step_slug
        where q.msg_id = p.msg_id
       returning q.msg_id
     )
     select array_agg(h.msg_id) from hidden h',
    pgmq.format_table_name(v_slug, 'q'))
  into v_msg_ids
  using claim_tasks.qty, v_flow.opt_timeout, v_slug;

  if v_msg_ids is null then
    return;
  end if;

  if to_regclass('pg_temp.pgflow_claim') is null then
    create temporary table pgflow_claim (
      msg_id bigint, run_id uuid, step_slug text, task_index int, attempt int,
      step_type text, deps_count int, payload text
    ) on commit delete rows;
  end if;
  delete from pg_temp.pgflow_claim;

  with claimable as (
    select t.run_id, t.step_slug, t.task_index
      from pgflow.step_tasks t
      join pgflow.runs r on r.run_id = t.run_id
      join pgflow.step_states ss on ss.run_id = t.run_id and ss.step_slug = t.step_slug
     where t.flow_slug = v_slug and t.message_id = any (v_msg_ids)
       and t.status = 'queued' and r.status = 'started' and ss.status = 'started'
     for update of t
  ), claimed as (
    update pgflow.step_tasks t
       set status = 'started', attempts_count = t.attempts_count + 1, started_at = now(),
           last_worker_id = claim_tasks.worker_id
      from claimable c
     where t.run_id = c.run_id and t.step_slug = c.step_slug and t.task_index = c.task_index
       and t.status = 'queued'
    returning t.message_id, t.run_id, t.step_slug, t.task_index, t.attempts_count
  )
  insert into pg_temp.pgflow_claim
  select c.message_id, c.run_id, c.step_slug, c.task_index, c.attempts_count, s.step_type,
         s.deps_count, null
    from claimed c
    join pgflow.steps s on s.flow_slug = v_slug and s.step_slug = c.step_slug;

  -- messages that can never be used again: their task finished, was cancelled, or is gone
  get diagnostics v_claimed = row_count;
  if v_claimed < cardinality(v_msg_ids) then
    select array_agg(m.id) into v_dead
      from unnest(v_msg_ids) m(id)
      left join pg_temp.pgflow_claim c on c.msg_id = m.id
     where c.msg_id is null
       and not exists (
         select 1 from pgflow.step_tasks t
          where t.flow_slug = v_slug and t.message_id = m.id and t.status in ('queued', 'started'));
    perform pgflow._archive_messages(v_slug, v_dead);
  end if;

  -- parents of dependent maps: small arrays go once as a blob and are sliced by the worker;
  -- the elements of large ones are cut out here from one in-memory copy of the array
  for v_parent in
    select c.run_id, d.dep_slug, c.step_slug, max(pg_column_size(ps.output)) as size
      from pg_temp.pgflow_claim c
      join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
      join pgflow.step_states ps on ps.run_id = c.run_id and ps.step_slug = d.dep_slug
     where c.step_type = 'map' and c.deps_count = 1
     group by c.run_id, d.dep_slug, c.step_slug
  loop
    if v_parent.size <= claim_tasks.inline_array_limit then
      return query
      select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
             null::text[], ps.output::text
        from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
    else
      select ps.output into v_array from pgflow.step_states ps
       where ps.run_id = v_parent.run_id and ps.step_slug = v_parent.dep_slug;
      update pg_temp.pgflow_claim c set payload = coalesce((v_array -> c.task_index)::text, 'null')
       where c.run_id = v_parent.run_id and c.step_slug = v_parent.step_slug;
    end if;
  end loop;

  return query
  with step_deps as (
    select s.step_slug,
           coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
                      where d.flow_slug = v_slug and d.step_slug = s.step_slug), '{}'::text[]) as deps
      from pgflow.steps s
     where s.flow_slug = v_slug
  )
  select 'task'::text, c.msg_id, c.run_id::text, c.step_slug, c.task_index, c.attempt,
         case when c.payload is not null then 3
              when c.step_type = 'map' then 2
              when c.deps_count = 0 then 0
              else 1 end,
         sd.deps,
         c.payload
    from pg_temp.pgflow_claim c
    join step_deps sd on sd.step_slug = c.step_slug
   order by c.msg_id;

  -- the run input, once per run, for root steps
  return query
  select 'blob'::text, null::bigint, r.run_id::text, ''::text, null::int, null::int, null::int,
         null::text[], r.input::text
    from pgflow.runs r
   where r.run_id in (select c.run_id from pg_temp.pgflow_claim c where c.deps_count = 0);

  -- dependency outputs of dependent single steps, once per (run, dependency)
  return query
  select 'blob'::text, null::bigint, ps.run_id::text, ps.step_slug, null::int, null::int, null::int,
         null::text[], ps.output::text
    from pgflow.step_states ps
   where ps.status = 'completed'
     and (ps.run_id, ps.step_slug) in (
       select distinct c.run_id, d.dep_slug
         from pg_temp.pgflow_claim c
         join pgflow.deps d on d.flow_slug = v_slug and d.step_slug = c.step_slug
        where c.step_type = 'single' and c.deps_count > 0);
end;
$$;

-- Reports many results in one transaction. Item i is a completion with outputs[i] when
-- error_messages[i] is NULL, otherwise a failure with that message. Equivalent to calling
-- complete_task / fail_task for each item in order, but completions that only count down a
-- step (the common case of map tasks) are applied together, with one counter update per step.
-- Late, duplicate and foreign items are ignored one by one. Returns the number of items that
-- took effect.
create or replace function pgflow.report_tasks(
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null
)
returns int
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_n int := coalesce(cardinality(report_tasks.run_ids), 0);
  v_applied int := 0;
  v_item record;
  v_flow_msgs record;
begin
  if coalesce(cardinality(report_tasks.step_slugs), 0) <> v_n
     or coalesce(cardinality(report_tasks.task_indexes), 0) <> v_n
     or (report_tasks.outputs is not null and jsonb_typeof(report_tasks.outputs) <> 'array')
     or coalesce(jsonb_array_length(coalesce(report_tasks.outputs, '[]')), 0) not in (0, v_n)
     or (report_tasks.error_messages is not null and cardinality(report_tasks.error_messages) <> v_n) then
    raise exception 'report_tasks: run_ids, step_slugs, task_indexes, outputs (a JSON array) and '
      'error_messages must all have one element per item (% items)', v_n using errcode = '22023';
  end if;
  if v_n = 0 then
    return 0;
  end if;

  -- the usual lock order, and always the same order between concurrent batches
  perform 1 from pgflow.runs r
   where r.run_id in (select distinct x from unnest(report_tasks.run_ids) x)
   order by r.run_id
  for update;

  if to_regclass('pg_temp.pgflow_report') is null then
    create temporary table pgflow_report (
      ord int, run_id uuid, step_slug text, task_index int, output jsonb, error_message text,
      flow_slug text, message_id bigint, simple boolean
    ) on commit delete rows;
  end if;
  delete from pg_temp.pgflow_report;

  insert into pg_temp.pgflow_report
  with items as (
    select i.ord::int as ord, i.run_id, i.step_slug, i.task_index,
           report_tasks.outputs -> (i.ord::int - 1) as output,
           report_tasks.error_messages[i.ord] as error_message
      from unnest(report_tasks.run_ids, report_tasks.step_slugs, report_tasks.task_indexes)
           with ordinality as i(run_id, step_slug, task_index, ord)
  ), facts as (
    select it.*, t.flow_slug, t.message_id, t.status as task_status, ss.status as step_status,
           ss.remaining_tasks, r.status as run_status, s.step_type,
           row_number() over (partition by it.run_id, it.step_slug, it.task_index order by it.ord) as dup_rank,
           row_number() over (partition by it.run_id, it.step_slug order by it.ord) as step_rank
      from items it
      left join pgflow.step_tasks t
        on t.run_id = it.run_id and t.step_slug = it.step_slug and t.task_index = it.task_index
      left join pgflow.step_states ss on ss.run_id = it.run_id and ss.step_slug = it.step_slug
      left join pgflow.runs r on r.run_id = it.run_id
      left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = it.step_slug
  ), classified as (
    -- a simple item only counts its step down: a completion of a running task that is not the
    -- last one its step waits for (single steps have one task, so they are never simple)
    select f.*, (f.error_message is null and f.run_status = 'started' and f.step_status = 'started'
                 and f.task_status = 'started' and f.dup_rank = 1 and f.step_type = 'map'
                 and f.step_rank < f.remaining_tasks) as is_simple
      from facts f
  )
  select c.ord, c.run_id, c.step_slug, c.task_index, c.output, c.error_message, c.flow_slug,
         c.message_id,
         -- only simple items before the first other item of their run may be applied early
         c.is_simple and c.ord < coalesce(min(case when not c.is_simple then c.ord end)
                                            over (partition by c.run_id), 2147483647)
    from classified c;

  update pgflow.step_tasks t
     set status = 'completed', completed_at = now(), output = coalesce(x.output, 'null'::jsonb)
    from pg_temp.pgflow_report x
   where x.simple and t.run_id = x.run_id and t.step_slug = x.step_slug and t.task_index = x.task_index;
  get diagnostics v_applied = row_count;

  update pgflow.step_states ss set remaining_tasks = ss.remaining_tasks - g.n
    from (select x.run_id, x.step_slug, count(*)::int as n from pg_temp.pgflow_report x
           where x.simple group by x.run_id, x.step_slug) g
   where ss.run_id = g.run_id and ss.step_slug = g.step_slug;

  for v_flow_msgs in
    select x.flow_slug, array_agg(x.message_id) as ids from pg_temp.pgflow_report x
     where x.simple and x.message_id is not null group by x.flow_slug
  loop
    perform pgflow._archive_messages(v_flow_msgs.flow_slug, v_flow_msgs.ids);
  end loop;

  for v_item in select x.* from pg_temp.pgflow_report x where not x.simple order by x.ord loop
    if v_item.error_message is null then
      perform 1 from pgflow.complete_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                          coalesce(v_item.output, 'null'::jsonb));
    else
      perform 1 from pgflow.fail_task(v_item.run_id, v_item.step_slug, v_item.task_index,
                                      v_item.error_message);
    end if;
    if found then
      v_applied := v_applied + 1;
    end if;
  end loop;
  return v_applied;
end;
$$;
