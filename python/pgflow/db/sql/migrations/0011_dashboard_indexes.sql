-- The indexes of the dashboard's run lists (pgflow dashboard): newest runs first, whole or by
-- flow, status or both, resumed after the last run a page showed (keyset pagination). run_id
-- breaks ties between runs started in one transaction (they share started_at). The indexes by
-- flow and by status gain run_id rather than staying beside new ones: what used the old ones
-- uses their prefix, and every run inserted updates one index less.
--
-- Building them reads the whole runs table and blocks writes to it meanwhile: on a large
-- database, migrate when a pause of a few seconds per million runs is acceptable.

drop index pgflow.runs_flow_slug_idx;
drop index pgflow.runs_status_idx;
create index runs_started_at_idx on pgflow.runs (started_at desc, run_id desc);
create index runs_flow_slug_idx on pgflow.runs (flow_slug, started_at desc, run_id desc);
create index runs_status_idx on pgflow.runs (status, started_at desc, run_id desc);
create index runs_flow_status_idx on pgflow.runs (flow_slug, status, started_at desc, run_id desc);
