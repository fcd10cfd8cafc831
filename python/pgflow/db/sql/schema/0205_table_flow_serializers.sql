-- The serializer a flow names (our addition): how its handlers' inputs and outputs map between
-- Python values and JSON, recorded with the flow so that clients and every worker agree. A flow
-- without a row uses the default. Kept apart from pgflow.flows, whose columns (and so
-- create_flow's result) follow pgflow's contract; it goes with its flow.
create table pgflow.flow_serializers (
  flow_slug text primary key references pgflow.flows (flow_slug) on delete cascade,
  serializer text not null,
  constraint serializer_is_named check (length(serializer) between 1 and 128)
);
