create or replace function pgflow.ensure_flow_compiled(
  flow_slug text,
  shape jsonb,
  allow_data_loss boolean default false
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := ensure_flow_compiled.flow_slug;
  v_diffs text[];
begin
  -- ours: a malformed shape gets a message that says what a shape is
  perform pgflow._check_shape(ensure_flow_compiled.shape);
  -- one compiler per flow at a time; the lock ends with the transaction
  perform pg_advisory_xact_lock(1885434471, hashtext(v_slug));

  if not exists (select 1 from pgflow.flows f where f.flow_slug = v_slug) then
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'compiled', 'differences', '[]'::jsonb);
  end if;

  v_diffs := pgflow._compare_flow_shapes(ensure_flow_compiled.shape, pgflow._get_flow_shape(v_slug));
  if cardinality(v_diffs) = 0 then
    perform pgflow._apply_shape_options(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'verified', 'differences', '[]'::jsonb);
  end if;

  if coalesce(ensure_flow_compiled.allow_data_loss, false) then
    -- This function runs with its owner's rights, and worker and client roles may call it; the
    -- right to destroy a flow's data stays with whoever may call delete_flow_and_data (the
    -- owner). session_user is the login, which a non-superuser cannot change.
    if not has_function_privilege(session_user, 'pgflow.delete_flow_and_data(text)', 'execute') then
      raise exception 'flow % differs from the database and replacing it would delete its runs, '
        'which only the owner of schema pgflow may do; run the compile with allow_data_loss as that '
        'role, or deploy the changed flow under a new slug', quote_literal(v_slug)
        using errcode = '42501', detail = array_to_string(v_diffs, '; ');
    end if;
    perform pgflow.delete_flow_and_data(v_slug);
    perform pgflow._create_flow_from_shape(v_slug, ensure_flow_compiled.shape);
    return jsonb_build_object('status', 'recompiled', 'differences', to_jsonb(v_diffs));
  end if;

  return jsonb_build_object('status', 'mismatch', 'differences', to_jsonb(v_diffs));
end;
$$;
