create or replace function pgflow._archive_messages(p_flow_slug text, p_msg_ids bigint[])
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_msg_ids is not null and cardinality(p_msg_ids) > 0 then
    perform pgmq.archive(p_flow_slug, p_msg_ids);
  end if;
end;
$$;
