create or replace function pgflow.register_worker(worker_id uuid, queue_name text, function_name text)
returns pgflow.workers
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  insert into pgflow.workers (worker_id, queue_name, function_name)
  values (register_worker.worker_id, register_worker.queue_name, register_worker.function_name)
  on conflict (worker_id) do update
    set last_heartbeat_at = now(), stopped_at = null
  returning *;
$$;
