-- Batched worker call (our addition, contract section 9): the outcome is the same as calling
-- start_tasks with the messages read.
--
-- Claims up to qty visible tasks of a flow in one round trip: reads their messages (hiding each
-- for its step's timeout + 2 s), starts the tasks, and returns what a worker needs to build the
-- handler inputs, as raw JSON text. Three kinds of rows:
--   kind 'task': msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload
--       mode 0: input is the run input (blob run_id + '')
--       mode 1: input is {dep: output} of the deps listed (blobs run_id + dep; a dep without a
--               blob was skipped and is left out)
--       mode 2: input is element task_index of the array in blob run_id + deps[1] (or of the run
--               input when deps is empty)
--       mode 3: input is payload itself (an element of a large parent array, cut out here so the
--               whole array is not sent for every batch)
--   kind 'blob': run_id, step_slug ('' for the run input), payload: each blob once per call.
--   kind 'dead': msg_id of a message archived because its task can no longer run (a duplicate,
--       or its task finished, was cancelled or is gone). Starting
-- the tasks of the messages read is pgflow._claim_messages, shared with report_and_claim.
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
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_slug text := claim_tasks.flow_slug;
  v_flow pgflow.flows;
  v_msg_ids bigint[];
  v_steps text[];
begin
  if claim_tasks.qty is null or claim_tasks.qty < 1 then
    raise exception 'claim_tasks: qty must be 1 or more, got %', coalesce(claim_tasks.qty::text, 'NULL')
      using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  -- statements run through EXECUTE are planned at every call: keep them simple
  execute format(
    'select array_agg(p.msg_id order by p.msg_id), array_agg(p.message ->> ''step_slug'' order by p.msg_id)
       from (select q.msg_id, q.message from pgmq.%I q
              where q.vt <= clock_timestamp()
              order by q.msg_id
              limit $1
              for update skip locked) p',
    pgmq.format_table_name(v_slug, 'q'))
  into v_msg_ids, v_steps
  using claim_tasks.qty;

  v_msg_ids := pgflow._hide_messages(v_slug, v_msg_ids, v_steps, v_flow.opt_timeout);
  if v_msg_ids is null then
    return;
  end if;

  return query
  select * from pgflow._claim_messages(v_slug, claim_tasks.worker_id, v_msg_ids,
                                        claim_tasks.inline_array_limit);
end;
$$;
