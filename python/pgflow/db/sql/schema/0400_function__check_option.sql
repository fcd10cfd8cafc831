-- Checks of flow definitions (create_flow, add_step, flow shapes, ensure_flow_compiled) raise
-- SQLSTATE 22023 (invalid_parameter_value) with a message that names the flow, the step and what
-- to do, so that a bad definition fails when it is made.
create or replace function pgflow._check_option(p_what text, p_name text, p_value int, p_min int)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is not null and p_value < p_min then
    raise exception '%: % must be % or more, got %', p_what, p_name, p_min, p_value
      using errcode = '22023';
  end if;
end;
$$;
