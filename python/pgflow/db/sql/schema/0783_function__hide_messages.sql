-- Hides claimed messages from other readers for their step's timeout + 2 s (the flow's timeout
-- for a step without its own) and counts the read, as pgmq's read does. Only messages visible
-- now are hidden (a message sent with a delay stays where it is); returns their ids, in order.
create or replace function pgflow._hide_messages(
  p_flow_slug text,
  p_msg_ids bigint[],
  p_step_slugs text[],
  p_default_timeout int
)
returns bigint[]
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_group record;
  v_part bigint[];
  v_hidden bigint[] := '{}';
begin
  if p_msg_ids is null or cardinality(p_msg_ids) = 0 then
    return null;
  end if;
  -- one update per timeout (usually one for the whole batch): `msg_id = any (...)` is served by
  -- the queue's primary key whatever the planner thinks of the array's size, where a join with
  -- the array may scan the whole queue
  for v_group in
    select coalesce(s.opt_timeout, p_default_timeout) + 2 as secs, array_agg(m.msg_id) as ids
      from unnest(p_msg_ids, p_step_slugs) as m(msg_id, step_slug)
      left join pgflow.steps s on s.flow_slug = p_flow_slug and s.step_slug = m.step_slug
     group by 1
  loop
    -- statements run through EXECUTE are planned at every call: keep this one simple
    execute format(
      'with hidden as (
         update pgmq.%I q
            set vt = clock_timestamp() + make_interval(secs => $2), read_ct = q.read_ct + 1
          where q.msg_id = any ($1) and q.vt <= clock_timestamp()
         returning q.msg_id
       )
       select array_agg(h.msg_id) from hidden h',
      pgmq.format_table_name(p_flow_slug, 'q'))
    into v_part
    using v_group.ids, v_group.secs;
    v_hidden := v_hidden || coalesce(v_part, '{}');
  end loop;
  if cardinality(v_hidden) = 0 then
    return null;
  end if;
  return array(select x from unnest(v_hidden) x order by x);
end;
$$;
