-- Cancels every open (queued or started) task of a run and archives their messages.
create or replace function pgflow._cancel_open_tasks(p_run_id uuid, p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_msgs bigint[];
begin
  with cancelled as (
    update pgflow.step_tasks t set status = 'cancelled'
     where t.run_id = p_run_id and t.status in ('queued', 'started')
    returning t.message_id
  )
  select array_agg(c.message_id) into v_msgs from cancelled c where c.message_id is not null;
  perform pgflow._archive_messages(p_flow_slug, v_msgs);
end;
$$;
