-- Run headers (our addition): pgflow.run_headers keeps a small object of strings with a run,
-- such as the trace context of the process that started it, written by the new
-- pgflow.start_flow_with_headers in the run's own transaction and deleted with the run.
-- pgflow.start_flow and the tables of pgflow's contract do not change.

-- Headers kept with a run (our addition): a small JSON object of strings that the process
-- starting the run hands along, such as W3C trace context (`traceparent`, `tracestate`) for a
-- tracing plugin. Written only by pgflow.start_flow_with_headers, in the transaction that
-- creates the run, and deleted with the run. Kept apart from pgflow.runs, whose columns (and so
-- start_flow's result) follow pgflow's contract, so that runs started without headers, and the
-- claim and report path, do not change at all.
create table pgflow.run_headers (
  run_id uuid primary key references pgflow.runs (run_id) on delete cascade,
  headers jsonb not null,
  constraint headers_is_object check (jsonb_typeof(headers) = 'object')
);

revoke all on table pgflow.run_headers from public;

-- Starts a run exactly as pgflow.start_flow does and keeps `headers` with it (our addition), in
-- the same transaction: a worker that claims one of the run's tasks can read them. `headers` is
-- a JSON object of non-empty names with string values, 8 KB at most as JSON text; NULL or `{}`
-- keeps nothing. Headers of an existing run cannot be written: a run id that is taken fails
-- here as in start_flow (runs_pkey), before anything is kept.
create or replace function pgflow.start_flow_with_headers(flow_slug text, input jsonb, headers jsonb,
                                                          run_id uuid default null)
returns setof pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_headers jsonb := start_flow_with_headers.headers;
  v_bad text;
  v_run pgflow.runs;
begin
  if v_headers is not null then
    if jsonb_typeof(v_headers) <> 'object' then
      raise exception 'headers must be a JSON object of strings, got a JSON %', jsonb_typeof(v_headers)
        using errcode = '22023';
    end if;
    select h.key into v_bad from jsonb_each(v_headers) h
     where h.key = '' or jsonb_typeof(h.value) <> 'string'
     order by h.key limit 1;
    if found then
      raise exception 'header % must have a non-empty name and a string value, got a JSON %',
        to_json(v_bad)::text, jsonb_typeof(v_headers -> v_bad)
        using errcode = '22023';
    end if;
    if octet_length(v_headers::text) > 8192 then
      raise exception 'headers must be at most 8192 bytes as JSON text, got %',
        octet_length(v_headers::text)
        using errcode = '22023', hint = 'keep headers small (trace context, ids); put data in the run input';
    end if;
  end if;

  select r.* into v_run
    from pgflow.start_flow(start_flow_with_headers.flow_slug, start_flow_with_headers.input,
                           start_flow_with_headers.run_id) r;

  if v_headers is not null and v_headers <> '{}'::jsonb then
    insert into pgflow.run_headers (run_id, headers) values (v_run.run_id, v_headers);
  end if;

  return next v_run;
end;
$$;

revoke all on function pgflow.start_flow_with_headers(text, jsonb, jsonb, uuid) from public;

do $$
declare
  v_role text;
begin
  foreach v_role in array array['pgflow_worker', 'pgflow_client'] loop
    continue when not exists (select 1 from pg_roles where rolname = v_role);
    execute format('grant select on pgflow.run_headers to %I', v_role);
    execute format('grant execute on function pgflow.start_flow_with_headers(text, jsonb, jsonb, uuid) to %I', v_role);
  end loop;
end;
$$;
