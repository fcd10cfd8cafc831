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
