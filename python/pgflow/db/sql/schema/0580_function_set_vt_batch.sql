create or replace function pgflow.set_vt_batch(queue_name text, msg_ids bigint[], vt_offsets int[])
returns setof pgmq.message_record
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(cardinality(set_vt_batch.msg_ids), 0) <> coalesce(cardinality(set_vt_batch.vt_offsets), 0) then
    raise exception 'set_vt_batch: msg_ids has % elements but vt_offsets has %; give one offset per message',
      coalesce(cardinality(set_vt_batch.msg_ids), 0), coalesce(cardinality(set_vt_batch.vt_offsets), 0)
      using errcode = '22023';
  end if;
  if coalesce(cardinality(set_vt_batch.msg_ids), 0) = 0 then
    return;
  end if;
  return query execute format(
    'update pgmq.%I q set vt = clock_timestamp() + make_interval(secs => v.off)
       from unnest($1, $2) as v(id, off)
      where q.msg_id = v.id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.last_read_at, q.vt, q.message, q.headers',
    pgmq.format_table_name(set_vt_batch.queue_name, 'q'))
  using set_vt_batch.msg_ids, set_vt_batch.vt_offsets;
end;
$$;
