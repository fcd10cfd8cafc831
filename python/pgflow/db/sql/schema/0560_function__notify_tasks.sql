-- Wakes workers of a flow when tasks become visible. Postgres folds identical notifications of a
-- transaction into one, so a fan-out of many tasks sends one notification.
--
-- The transaction-local setting pgflow.wakeups changes this: 'off' sends nothing; 'defer'
-- (set by report_and_claim) only notes the flow in pgflow.deferred_wakeups, so that the caller
-- can claim the new tasks itself first and wake other workers only for what it leaves.
create or replace function pgflow._notify_tasks(p_flow_slug text)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_mode text := coalesce(current_setting('pgflow.wakeups', true), '');
begin
  if v_mode = 'off' then
    return;
  elsif v_mode = 'defer' then
    perform set_config('pgflow.deferred_wakeups',
                       coalesce(current_setting('pgflow.deferred_wakeups', true), '') || ',' || p_flow_slug,
                       true);
  else
    perform pg_notify('pgflow_tasks', p_flow_slug);
  end if;
end;
$$;
