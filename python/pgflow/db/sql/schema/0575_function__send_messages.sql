-- Sends messages to a flow's queue, visible after delay seconds, and returns their ids in the
-- order of the messages (ids come from the queue's identity sequence in insertion order, so the
-- n-th smallest id belongs to the n-th message). Writes the queue table the way pgmq.send_batch
-- does, in one statement: pgmq's send_batch goes through an SQL-language wrapper, which
-- Postgres parses and plans again at every call, and that cost is paid on every hop of a run.
create or replace function pgflow._send_messages(p_flow_slug text, p_messages jsonb[], p_delay int)
returns bigint[]
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
begin
  if p_messages is null or cardinality(p_messages) = 0 then
    return '{}';
  end if;
  execute format(
    'with sent as (
       insert into pgmq.%I (vt, message)
       select clock_timestamp() + make_interval(secs => $2), m.message
         from unnest($1) with ordinality as m(message, ord)
        order by m.ord
       returning msg_id
     )
     select array_agg(s.msg_id order by s.msg_id) from sent s',
    pgmq.format_table_name(p_flow_slug, 'q'))
  into v_ids
  using p_messages, coalesce(p_delay, 0);
  return v_ids;
end;
$$;
