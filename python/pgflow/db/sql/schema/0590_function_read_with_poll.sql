-- Reads messages of a flow's queue, waiting up to max_poll_seconds for some to become visible.
-- Workers on the contract's per-task path read with it, so that they need no rights on pgmq's
-- tables: it runs with its owner's rights and reads only the queues of flows.
create or replace function pgflow.read_with_poll(
  queue_name text,
  vt int,
  qty int,
  max_poll_seconds int default 5,
  poll_interval_ms int default 100,
  conditional jsonb default '{}'
)
returns setof pgmq.message_record
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_stop timestamptz := clock_timestamp() + make_interval(secs => greatest(coalesce(read_with_poll.max_poll_seconds, 0), 0));
begin
  if not exists (select 1 from pgflow.flows f where f.flow_slug = read_with_poll.queue_name) then
    raise exception 'queue % is not the queue of a pgflow flow', coalesce(quote_literal(read_with_poll.queue_name), 'NULL')
      using errcode = '22023';
  end if;
  loop
    return query select * from pgmq.read(read_with_poll.queue_name, read_with_poll.vt, read_with_poll.qty,
                                         coalesce(read_with_poll.conditional, '{}'));
    exit when found or clock_timestamp() >= v_stop;
    perform pg_sleep(greatest(coalesce(read_with_poll.poll_interval_ms, 100), 1) / 1000.0);
  end loop;
end;
$$;
