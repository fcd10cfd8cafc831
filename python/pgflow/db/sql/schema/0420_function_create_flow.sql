-- Creates a flow and its queue; an existing flow is returned unchanged. Like pgflow, bad values
-- are left to the table's constraints (slug_is_valid, opt_*), so callers see the same errors.
-- Two checks are ours, because a flow slug is also its pgmq queue name: at most 47 characters,
-- and no flow that differs only by letter case (pgmq lowercases queue names).
create or replace function pgflow.create_flow(
  flow_slug text,
  max_attempts int default null,
  base_delay int default null,
  timeout int default null
)
returns pgflow.flows
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := create_flow.flow_slug;
  v_flow pgflow.flows;
  v_other text;
begin
  select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
  if found then
    return v_flow;
  end if;

  if pgflow.is_valid_slug(v_slug) and length(v_slug) > 47 then
    raise exception 'flow slug % is % characters long; a flow slug is also its pgmq queue name, '
      'which may have at most 47 characters: choose a shorter slug', quote_literal(v_slug), length(v_slug)
      using errcode = '22023';
  end if;
  select f.flow_slug into v_other from pgflow.flows f where lower(f.flow_slug) = lower(v_slug);
  if found then
    raise exception 'flow slug % differs only by letter case from existing flow %; pgmq queue '
      'names ignore case, so choose another slug', quote_literal(v_slug), quote_literal(v_other)
      using errcode = '22023';
  end if;

  insert into pgflow.flows (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  values (
    v_slug,
    coalesce(create_flow.max_attempts, 3),
    coalesce(create_flow.base_delay, 5),
    coalesce(create_flow.timeout, 60)
  )
  on conflict do nothing
  returning * into v_flow;

  if v_flow.flow_slug is null then
    -- another transaction created it (or a case twin) at the same moment
    select f.* into v_flow from pgflow.flows f where f.flow_slug = v_slug;
    if not found then
      raise exception 'flow slug % collides with a flow created concurrently that differs only by case',
        quote_literal(v_slug) using errcode = '22023';
    end if;
    return v_flow;
  end if;

  perform pgmq.create(v_slug);
  return v_flow;
end;
$$;
