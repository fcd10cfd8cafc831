-- Both roles get only EXECUTE on the functions they call and SELECT on pgflow's tables; the
-- functions they call run with their owner's rights (`security definer` in each function's
-- file), so neither role can write a table directly. Neither gets any right on pgmq's tables;
-- nothing is granted to PUBLIC. Destroying a flow's data (ensure_flow_compiled with allow_data_loss,
-- delete_flow_and_data) takes the owner.
--
-- The revokes and the grants `on all tables` reach only the objects that exist when they run, so
-- this file comes after every table and function, and a migration that adds a function must
-- revoke it from PUBLIC itself (per-schema default privileges cannot take a right away; the
-- roles test fails on any pgflow function PUBLIC may execute).

revoke all on all functions in schema pgflow from public;
revoke all on all tables in schema pgflow from public;

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
    execute format('grant execute on function pgflow.start_flow_with_headers(text, jsonb, jsonb, uuid) to %I', v_role);
    execute format('grant execute on function pgflow.get_run_with_states(uuid) to %I', v_role);
    execute format('grant execute on function pgflow.ensure_flow_compiled(text, jsonb, boolean) to %I', v_role);
  end loop;

  if exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    grant execute on function pgflow.cancel_run(uuid) to pgflow_client;
    -- schedules at run time (the CLI, the Client); workers fire them and reconcile the code's
    grant execute on function pgflow.create_schedule(text, text, text, text, jsonb, int) to pgflow_client;
    grant execute on function pgflow.set_schedule_paused(text, text, boolean) to pgflow_client;
    grant execute on function pgflow.remove_schedule(text, text) to pgflow_client;
  end if;

  if exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    grant execute on function pgflow.start_tasks(text, bigint[], uuid) to pgflow_worker;
    grant execute on function pgflow.read_with_poll(text, int, int, int, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb) to pgflow_worker;
    grant execute on function pgflow.complete_task(uuid, text, int, jsonb, int) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text) to pgflow_worker;
    grant execute on function pgflow.fail_task(uuid, text, int, text, int, text, text, text) to pgflow_worker;
    grant execute on function pgflow.claim_tasks(text, uuid, int, int) to pgflow_worker;
    grant execute on function pgflow.report_tasks(uuid[], text[], int[], jsonb, text[], int[], text[], text[],
                                                  text[])
      to pgflow_worker;
    grant execute on function pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[], int,
                                           text[], text[], text[])
      to pgflow_worker;
    grant execute on function pgflow.extend_tasks(text, uuid, uuid[], text[], int[], int[])
      to pgflow_worker;
    grant execute on function pgflow.release_tasks(text, uuid, uuid[], text[], int[], int[])
      to pgflow_worker;
    grant execute on function pgflow.register_worker(uuid, text, text) to pgflow_worker;
    grant execute on function pgflow.send_heartbeat(uuid) to pgflow_worker;
    grant execute on function pgflow.mark_worker_stopped(uuid) to pgflow_worker;
    grant execute on function pgflow.requeue_stalled_tasks() to pgflow_worker;
    grant execute on function pgflow.event_relay_turn(text, text, int, bigint) to pgflow_worker;
    grant execute on function pgflow.release_event_relay(text, text, bigint) to pgflow_worker;
    grant execute on function pgflow.sync_code_schedules(text, jsonb) to pgflow_worker;
    grant execute on function pgflow.claim_due_schedules(text[], int) to pgflow_worker;
    grant execute on function pgflow.fire_schedule_ticks(uuid, timestamptz[], timestamptz) to pgflow_worker;
  end if;
end;
$$;
