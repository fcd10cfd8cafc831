-- Roles (our addition): pgflow_worker runs tasks, pgflow_client starts and watches runs. Both
-- get only EXECUTE on the functions they call and SELECT on pgflow's tables; the functions they
-- call run with their owner's rights (security definer, search_path pinned to pg_catalog with
-- pg_temp last, and no use of objects a caller can create), so neither role can write a table
-- directly. Neither gets any right on pgmq's tables; nothing is granted to PUBLIC. Destroying a
-- flow's data (ensure_flow_compiled with allow_data_loss, delete_flow_and_data) takes the owner.
-- Grant a role to a login: `grant pgflow_worker to my_worker_login;`.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    create role pgflow_worker nologin;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    create role pgflow_client nologin;
  end if;
exception
  when insufficient_privilege then
    raise notice 'pgflow: roles pgflow_worker and pgflow_client not created (no CREATEROLE right); '
      'create them and run the grants of migration 0006 by hand to use them';
  when unique_violation then
    null;  -- another database's migration created them at the same moment
end;
$$;

revoke all on all functions in schema pgflow from public;
revoke all on all tables in schema pgflow from public;
alter default privileges in schema pgflow revoke execute on functions from public;

-- functions that clients and workers call directly run with the owner's rights
alter function pgflow.start_flow(text, jsonb, uuid) security definer;
alter function pgflow.start_flow_with_states(text, jsonb, uuid) security definer;
alter function pgflow.get_run_with_states(uuid) security definer;
alter function pgflow.cancel_run(uuid) security definer;
alter function pgflow.ensure_flow_compiled(text, jsonb, boolean) security definer;
alter function pgflow.start_tasks(text, bigint[], uuid) security definer;
alter function pgflow.read_with_poll(text, int, int, int, int, jsonb) security definer;
alter function pgflow.complete_task(uuid, text, int, jsonb) security definer;
alter function pgflow.complete_task(uuid, text, int, jsonb, int) security definer;
alter function pgflow.fail_task(uuid, text, int, text) security definer;
alter function pgflow.fail_task(uuid, text, int, text, int) security definer;
alter function pgflow.claim_tasks(text, uuid, int, int) security definer;
alter function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[]) security definer;
alter function pgflow.register_worker(uuid, text, text) security definer;
alter function pgflow.send_heartbeat(uuid) security definer;
alter function pgflow.mark_worker_stopped(uuid) security definer;
alter function pgflow.requeue_stalled_tasks() security definer;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant usage on schema pgflow to %I', v_role);
    execute format('grant select on all tables in schema pgflow to %I', v_role);
    execute format('grant execute on function pgflow.is_valid_slug(text) to %I', v_role);
    execute format('grant execute on function pgflow.calculate_retry_delay(numeric, int, int) to %I', v_role);
    execute format('grant execute on function pgflow.start_flow(text, jsonb, uuid) to %I', v_role);
    execute format('grant execute on function pgflow.start_flow_with_states(text, jsonb, uuid) to %I', v_role);
    execute format('grant execute on function pgflow.get_run_with_states(uuid) to %I', v_role);
    execute format('grant execute on function pgflow.ensure_flow_compiled(text, jsonb, boolean) to %I', v_role);
  end loop;

  if exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    grant execute on function pgflow.cancel_run(uuid) to pgflow_client;
  end if;

  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.start_tasks(text, bigint[], uuid) to pgflow_worker;
    grant execute on function pgflow.read_with_poll(text, int, int, int, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb, int) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text, int) to pgflow_worker;
    grant execute on function pgflow.claim_tasks(text, uuid, int, int) to pgflow_worker;
    grant execute on function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[]) to pgflow_worker;
    grant execute on function pgflow.register_worker(uuid, text, text) to pgflow_worker;
    grant execute on function pgflow.send_heartbeat(uuid) to pgflow_worker;
    grant execute on function pgflow.mark_worker_stopped(uuid) to pgflow_worker;
    grant execute on function pgflow.requeue_stalled_tasks() to pgflow_worker;
  end if;
end;
$$;
