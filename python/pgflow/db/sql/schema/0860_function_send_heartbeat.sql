-- Records a heartbeat; returns true when an operator has deprecated the worker (it should then
-- finish its in-flight tasks and exit), and NULL when the worker has no row (pruned while it
-- was alive: it registers again).
create or replace function pgflow.send_heartbeat(worker_id uuid)
returns boolean
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.workers w set last_heartbeat_at = now()
   where w.worker_id = send_heartbeat.worker_id
  returning w.deprecated_at is not null;
$$;
