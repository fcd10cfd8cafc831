-- Batched worker call (our addition): report results and take the tasks they made ready, in one
-- round trip and one transaction.
--
-- Does what report_tasks does with the same arguments, then claims, for worker_id, up to qty
-- tasks of flow_slug that this very transaction queued for the reported runs (the tasks of steps
-- it started, visible at once: not delayed by a start delay). They are claims in every respect,
-- exactly as claim_tasks makes them: attempt counted, message hidden for the step's timeout + 2 s,
-- rows in claim_tasks' shape. No other worker ever sees them queued. Other workers are woken
-- (NOTIFY) only for the tasks left over. Claims nothing when qty is 0 or the worker is not
-- registered (the report still happens).
-- retry_modes, tracebacks, outcomes: as report_tasks'.
create or replace function pgflow.report_and_claim(
  flow_slug text,
  worker_id uuid,
  qty int,
  run_ids uuid[],
  step_slugs text[],
  task_indexes int[],
  outputs jsonb,
  error_messages text[] default null,
  attempts int[] default null,
  inline_array_limit int default 262144,
  retry_modes text[] default null,
  tracebacks text[] default null,
  outcomes text[] default null
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
  v_slug text := report_and_claim.flow_slug;
  v_flow pgflow.flows;
  v_wakeups text := current_setting('pgflow.wakeups', true);
  v_deferred text[];
  v_runs uuid[];
  v_msg_ids bigint[];
  v_steps text[];
  v_wake text;
begin
  if report_and_claim.qty is null or report_and_claim.qty < 0 then
    raise exception 'report_and_claim: qty must be 0 or more, got %',
      coalesce(report_and_claim.qty::text, 'NULL') using errcode = '22023';
  end if;
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if v_flow.flow_slug is null then
    raise exception 'flow % does not exist', coalesce(quote_literal(v_slug), 'NULL') using errcode = '22023';
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    perform set_config('pgflow.wakeups', 'defer', true);
    perform set_config('pgflow.deferred_wakeups', '', true);
  end if;

  perform pgflow.report_tasks(report_and_claim.run_ids, report_and_claim.step_slugs,
                              report_and_claim.task_indexes, report_and_claim.outputs,
                              report_and_claim.error_messages, report_and_claim.attempts,
                              report_and_claim.retry_modes, report_and_claim.tracebacks,
                              report_and_claim.outcomes);

  select array_agg(distinct r) into v_runs from unnest(report_and_claim.run_ids) r;
  if report_and_claim.qty > 0 and v_runs is not null
     and exists (select 1 from pgflow.workers w where w.worker_id = report_and_claim.worker_id) then
    -- the tasks of the steps this transaction started (a step's started_at is its
    -- transaction's start), through the primary keys of the reported runs
    select array_agg(f.message_id order by f.message_id), array_agg(f.step_slug order by f.message_id)
      into v_msg_ids, v_steps
      from (
        select t.message_id, t.step_slug
          from pgflow.step_states ss
          join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
         where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
           and ss.started_at = now() and t.status = 'queued' and t.message_id is not null
         order by t.message_id
         limit report_and_claim.qty
      ) f;
    v_msg_ids := pgflow._hide_messages(v_slug, v_msg_ids, v_steps, v_flow.opt_timeout);
  end if;

  if coalesce(v_wakeups, '') <> 'off' then
    v_deferred := array(select distinct x from unnest(string_to_array(
      current_setting('pgflow.deferred_wakeups', true), ',')) x where x <> '');
    perform set_config('pgflow.wakeups', coalesce(v_wakeups, ''), true);
    perform set_config('pgflow.deferred_wakeups', '', true);
    foreach v_wake in array v_deferred loop
      -- wake the others only when something this transaction queued is still visible to them
      -- (when fewer tasks were hidden than asked for, the claim took all there were)
      if v_wake <> v_slug or (coalesce(cardinality(v_msg_ids), 0) >= report_and_claim.qty and exists (
           select 1 from pgflow.step_states ss
             join pgflow.step_tasks t on t.run_id = ss.run_id and t.step_slug = ss.step_slug
            where ss.run_id = any (v_runs) and ss.flow_slug = v_slug and ss.status = 'started'
              and ss.started_at = now() and t.status = 'queued'
              and not (t.message_id = any (coalesce(v_msg_ids, '{}'))))) then
        perform pgflow._notify_tasks(v_wake);
      end if;
    end loop;
  end if;

  if v_msg_ids is null then
    return;
  end if;
  return query
  select * from pgflow._claim_messages(v_slug, report_and_claim.worker_id, v_msg_ids,
                                        report_and_claim.inline_array_limit);
end;
$$;
