-- Wakes workers of a flow when tasks become visible. Postgres folds identical notifications of a
-- transaction into one, so a fan-out of many tasks sends one notification.
create or replace function pgflow._notify_tasks(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(current_setting('pgflow.wakeups', true), '') <> 'off' then
    perform pg_notify('pgflow_tasks', p_flow_slug);
  end if;
end;
$$;
