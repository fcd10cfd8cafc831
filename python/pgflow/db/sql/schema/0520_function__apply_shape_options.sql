-- Runtime options are not part of a shape's identity; when a verified shape carries them, they
-- are applied, so a worker deploy can change retries and timeouts without data loss. Bad values
-- are left to the tables' constraints, as in create_flow and add_step.
create or replace function pgflow._apply_shape_options(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_opts jsonb := p_shape -> 'options';
  v_step jsonb;
  v_step_opts jsonb;
begin
  if v_opts is not null and jsonb_typeof(v_opts) = 'object' then
    update pgflow.flows f set
      opt_max_attempts = coalesce(pgflow._shape_int(v_opts, 'maxAttempts'), 3),
      opt_base_delay = coalesce(pgflow._shape_int(v_opts, 'baseDelay'), 5),
      opt_timeout = coalesce(pgflow._shape_int(v_opts, 'timeout'), 60)
    where f.flow_slug = p_flow_slug;
    perform pgflow._record_serializer(p_flow_slug, p_shape);
  end if;
  for v_step in select s from jsonb_array_elements(p_shape -> 'steps') s loop
    v_step_opts := v_step -> 'options';
    continue when v_step_opts is null or jsonb_typeof(v_step_opts) <> 'object';
    update pgflow.steps s set
      opt_max_attempts = pgflow._shape_int(v_step_opts, 'maxAttempts'),
      opt_base_delay = pgflow._shape_int(v_step_opts, 'baseDelay'),
      opt_timeout = pgflow._shape_int(v_step_opts, 'timeout'),
      opt_start_delay = pgflow._shape_int(v_step_opts, 'startDelay')
    where s.flow_slug = p_flow_slug and s.step_slug = v_step ->> 'slug';
  end loop;
end;
$$;
