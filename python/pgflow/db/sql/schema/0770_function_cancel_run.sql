-- Our addition: cancels a started run. Its open tasks are cancelled and their messages archived;
-- results that arrive later are ignored like any late callback. Returns the run; a run that has
-- already finished is returned unchanged.
create or replace function pgflow.cancel_run(run_id uuid)
returns pgflow.runs
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgflow.runs;
begin
  select r.* into v_run from pgflow.runs r where r.run_id = cancel_run.run_id for update;
  if v_run.run_id is null then
    raise exception 'run % does not exist', coalesce(cancel_run.run_id::text, 'NULL')
      using errcode = '22023';
  end if;
  if v_run.status <> 'started' then
    return v_run;
  end if;

  update pgflow.runs r
     set status = 'cancelled', cancelled_at = now(), error_message = 'Run cancelled'
   where r.run_id = v_run.run_id
  returning r.* into v_run;

  perform pgflow._cancel_open_tasks(v_run.run_id, v_run.flow_slug);

  perform pgflow._emit(v_run.run_id, 'run:cancelled', jsonb_build_object(
    'event_type', 'run:cancelled',
    'run_id', v_run.run_id,
    'flow_slug', v_run.flow_slug,
    'status', 'cancelled',
    'cancelled_at', v_run.cancelled_at));
  return v_run;
end;
$$;
