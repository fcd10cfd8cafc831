create or replace function pgflow.mark_worker_stopped(worker_id uuid)
returns void
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  update pgflow.workers w set stopped_at = now(), last_heartbeat_at = now()
   where w.worker_id = mark_worker_stopped.worker_id and w.stopped_at is null;
$$;
