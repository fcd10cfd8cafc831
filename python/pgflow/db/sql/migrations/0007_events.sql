-- Events kept in pgflow.events and relayed by one worker at a time (pgflow.event_relay), a
-- task:retrying event for a failed attempt that will be retried, every event with its flow_slug,
-- and prune_data_older_than deleting old events. See docs/events.md.

-- Run, step and task events, kept so that a relay can deliver them to event sinks at least once,
-- in order per run, and resume after a crash (our addition; see docs/events.md). Written by
-- pgflow._store_event when events are on, read in id order by the relaying worker, deleted by
-- prune_data_older_than. Within one run, ids follow commit order: every writer of a run's events
-- holds the run's row lock until it commits.
create table pgflow.events (
  id bigint generated always as identity primary key,
  run_id uuid not null,
  flow_slug text not null,
  event_type text not null,
  payload jsonb not null,
  created_at timestamptz not null default now()
);

-- Which worker relays events to sinks, until when (its lease), and how far it got (our
-- addition). One row per relay name; the row is created by the first worker that asks. A
-- worker that stops releases its lease; one that dies loses it when the lease runs out, and
-- the next one resumes after last_id.
create table pgflow.event_relay (
  name text primary key,
  last_id bigint not null default 0,
  holder text,
  lease_until timestamptz,
  updated_at timestamptz not null default now(),
  constraint last_id_is_nonnegative check (last_id >= 0)
);

-- Whether our own events are kept (pgflow.events) and relayed to event sinks: the setting
-- pgflow.events, per database (`pgflow db events on|off`, i.e. alter database ... set
-- pgflow.events = 'on'|'off'; sessions opened afterwards see it). See docs/events.md.
create or replace function pgflow._events_on()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return coalesce(nullif(current_setting('pgflow.events', true), ''), 'off') = 'on';
end;
$$;

-- Keeps one event in pgflow.events, in the caller's transaction, and wakes the event relay with
-- an empty NOTIFY (Postgres sends one per transaction however many events it holds). Callers
-- check pgflow._events_on() first. The payload gets the run's flow_slug.
create or replace function pgflow._store_event(p_run_id uuid, p_flow_slug text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Held until this transaction ends, and taken before the id is: the relay lists the holders
  -- (pgflow.event_relay_turn) and reads past an id only once every writer that might still
  -- commit a smaller one has finished.
  perform pg_advisory_xact_lock_shared(1885434472, 2);
  insert into pgflow.events (run_id, flow_slug, event_type, payload)
  values (p_run_id, p_flow_slug, p_payload ->> 'event_type',
          p_payload || jsonb_build_object('flow_slug', p_flow_slug));
  perform pg_notify('pgflow_events', '');
end;
$$;

-- Sends one event. With Supabase's realtime.send present, every event also goes there, so
-- clients of the contract see runs that our workers execute, with the payload as given. When
-- our events are on (pgflow._events_on), the event is also kept in pgflow.events, with the
-- run's flow_slug, for the workers' event relay.
create or replace function pgflow._emit(p_run_id uuid, p_event_name text, p_payload jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_flow text;
begin
  if to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null then
    perform realtime.send(p_payload, p_event_name, 'pgflow:run:' || p_run_id::text, false);
  end if;
  if pgflow._events_on() then
    v_flow := p_payload ->> 'flow_slug';
    if v_flow is null then
      -- step events of pgflow's shape do not carry it; the caller holds the run's row already
      select r.flow_slug into v_flow from pgflow.runs r where r.run_id = p_run_id;
    end if;
    perform pgflow._store_event(p_run_id, v_flow, p_payload);
  end if;
end;
$$;

-- Whether events must be built at all: for Supabase's realtime.send, or for our own
-- (pgflow._events_on). PL/pgSQL rather than SQL: a SQL function with a SET clause is not
-- inlined, and is parsed and planned at every call.
create or replace function pgflow._events_enabled()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null
      or pgflow._events_on();
end;
$$;

-- Our form: see complete_task. `retry` (our addition) says what a failure that has attempts
-- left does: 'backoff' (the default, and NULL) queues the task again after the step's
-- exponential delay; 'now' queues it again without delay (a worker that stopped before its
-- task finished); 'never' fails the task at once, whatever attempts are left, and applies the
-- step's when_exhausted (a handler that raised pgflow.Fail, an input its handler cannot take).
create or replace function pgflow.fail_task(
  run_id uuid, step_slug text, task_index int, error_message text, attempt int,
  retry text default null
)
returns setof pgflow.step_tasks
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
  v_task pgflow.step_tasks;
  v_max_attempts int;
  v_base_delay int;
  v_delay int;
begin
  if fail_task.retry is not null and fail_task.retry not in ('backoff', 'now', 'never') then
    raise exception 'fail_task: retry must be ''backoff'', ''now'' or ''never'', got %',
      quote_literal(fail_task.retry) using errcode = '22023';
  end if;
  v_task := pgflow._lock_reported_task(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                       fail_task.attempt);
  if v_task.run_id is null then
    return;  -- a late, duplicate or foreign result
  end if;

  select coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay)
    into v_max_attempts, v_base_delay
    from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug
   where s.flow_slug = v_task.flow_slug and s.step_slug = fail_task.step_slug;

  if v_task.attempts_count < v_max_attempts and fail_task.retry is distinct from 'never' then
    update pgflow.step_tasks t
       set status = 'queued', error_message = fail_task.error_message, queued_at = now(),
           started_at = null
     where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
       and t.task_index = fail_task.task_index;
    v_delay := case when fail_task.retry = 'now' then 0
                    else pgflow.calculate_retry_delay(v_base_delay, v_task.attempts_count) end;
    perform pgflow.set_vt_batch(v_task.flow_slug, array[v_task.message_id], array[v_delay]);
    -- ours only (pgflow sends nothing on a retry, so realtime.send does not get it)
    if pgflow._events_on() then
      perform pgflow._store_event(fail_task.run_id, v_task.flow_slug, jsonb_build_object(
        'event_type', 'task:retrying',
        'run_id', fail_task.run_id,
        'step_slug', fail_task.step_slug,
        'task_index', fail_task.task_index,
        'status', 'queued',
        'attempt', v_task.attempts_count,
        'error_message', fail_task.error_message,
        'retry_in_seconds', v_delay));
    end if;
  else
    perform pgflow._task_exhausted(fail_task.run_id, fail_task.step_slug, fail_task.task_index,
                                   fail_task.error_message);
  end if;

  return query select t.* from pgflow.step_tasks t
    where t.run_id = fail_task.run_id and t.step_slug = fail_task.step_slug
      and t.task_index = fail_task.task_index;
end;
$$;

-- Deletes what is older than the interval: finished runs with their step states, tasks and
-- any of their messages still in a flow's queue; workers whose last heartbeat is older (a
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
                            'workers', v_workers, 'queued_messages', v_queued,
                            'archived_messages', v_messages, 'events', v_events);
end;
$$;

-- One turn of the event relay of worker `holder` (our addition; see docs/events.md). Takes the
-- lease of relay `relay` for `lease_seconds` when it is free or has run out, or renews it when
-- `holder` has it already, then records that the holder delivered every event up to
-- `delivered` (ignored from a holder that did not have the lease). Returns one row:
--   last_id: every event up to it was delivered (or dropped); read after it, in id order.
--     NULL while another holder's lease runs (and then so are the next two);
--   last_assigned, writers: the last event id handed out, and the transactions (virtual ids)
--     that were writing events then. Events up to last_assigned may be read once none of the
--     writers is still running (a smaller id may still be committed until then);
--   events_on: whether this database keeps events (pgflow._events_on), so that a relay can say
--     when it will never get any.
create or replace function pgflow.event_relay_turn(relay text, holder text, lease_seconds int, delivered bigint)
returns table (last_id bigint, last_assigned bigint, writers text[], events_on boolean)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_relay text := event_relay_turn.relay;
  v_holder text := event_relay_turn.holder;
  v_last bigint;
begin
  if coalesce(v_relay, '') = '' or coalesce(v_holder, '') = '' then
    raise exception 'event_relay_turn: relay and holder must be non-empty' using errcode = '22023';
  end if;
  if lease_seconds is null or lease_seconds < 1 then
    raise exception 'event_relay_turn: lease_seconds must be at least 1, got %',
      coalesce(lease_seconds::text, 'NULL') using errcode = '22023';
  end if;
  events_on := pgflow._events_on();
  insert into pgflow.event_relay as r (name) values (v_relay) on conflict (name) do nothing;
  update pgflow.event_relay r
     set holder = v_holder,
         lease_until = now() + make_interval(secs => lease_seconds),
         last_id = case when r.holder = v_holder then greatest(r.last_id, coalesce(delivered, 0))
                        else r.last_id end,
         updated_at = now()
   where r.name = v_relay
     and (r.holder is null or r.holder = v_holder or r.lease_until < now())
  returning r.last_id into v_last;
  if not found then
    return next;
    return;
  end if;
  -- in this order: a writer that took an id up to last_assigned took its lock before, so it
  -- is listed below unless it has finished
  last_id := v_last;
  last_assigned := coalesce(pg_sequence_last_value(pg_get_serial_sequence('pgflow.events', 'id')::regclass), 0);
  writers := array(
    select l.virtualtransaction from pg_locks l
     where l.locktype = 'advisory' and l.classid = 1885434472 and l.objid = 2 and l.objsubid = 2
       and l.granted
       and l.database = (select d.oid from pg_database d where d.datname = current_database()));
  return next;
end;
$$;

-- A relay that stops records what it delivered and gives its lease up, so another worker's
-- relay takes over at its next turn rather than when the lease runs out (our addition).
create or replace function pgflow.release_event_relay(relay text, holder text, delivered bigint)
returns void
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.event_relay r
     set last_id = greatest(r.last_id, coalesce(release_event_relay.delivered, 0)),
         holder = null, lease_until = null, updated_at = now()
   where r.name = release_event_relay.relay and r.holder = release_event_relay.holder;
$$;

revoke all on table pgflow.events from public;
revoke all on table pgflow.event_relay from public;
revoke all on function pgflow._events_on() from public;
revoke all on function pgflow._store_event(uuid, text, jsonb) from public;
revoke all on function pgflow.event_relay_turn(text, text, int, bigint) from public;
revoke all on function pgflow.release_event_relay(text, text, bigint) from public;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant select on table pgflow.events, pgflow.event_relay to %I', v_role);
  end loop;
  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.event_relay_turn(text, text, int, bigint) to pgflow_worker;
    grant execute on function pgflow.release_event_relay(text, text, bigint) to pgflow_worker;
  end if;
end;
$$;
