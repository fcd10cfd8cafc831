create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_diffs text[] := '{}';
  v_local jsonb[];
  v_db jsonb[];
  v_l jsonb;
  v_d jsonb;
  v_n int;
  v_field text;
  i int;
begin
  perform pgflow._check_shape(p_local);
  perform pgflow._check_shape(p_db);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_local from jsonb_array_elements(p_local -> 'steps') with ordinality t(s, o);
  select coalesce(array_agg(pgflow._normalize_step_shape(s) order by o), '{}')
    into v_db from jsonb_array_elements(p_db -> 'steps') with ordinality t(s, o);

  if cardinality(v_local) <> cardinality(v_db) then
    v_diffs := v_diffs || format('Step count differs: local %s, database %s',
      cardinality(v_local), cardinality(v_db));
  end if;

  v_n := greatest(cardinality(v_local), cardinality(v_db));
  for i in 1 .. v_n loop
    v_l := v_local[i];
    v_d := v_db[i];
    if v_d is null then
      v_diffs := v_diffs || format('Step %s (%s): present locally, missing in database',
        i - 1, v_l ->> 'slug');
      continue;
    elsif v_l is null then
      v_diffs := v_diffs || format('Step %s (%s): present in database, missing locally',
        i - 1, v_d ->> 'slug');
      continue;
    end if;
    foreach v_field in array array['slug', 'stepType', 'dependencies', 'whenUnmet',
                                   'whenExhausted', 'requiredInputPattern', 'forbiddenInputPattern'] loop
      if v_l -> v_field is distinct from v_d -> v_field then
        v_diffs := v_diffs || format('Step %s (%s): %s differs: local %s, database %s',
          i - 1, v_l ->> 'slug', v_field, v_l -> v_field, v_d -> v_field);
      end if;
    end loop;
  end loop;
  return v_diffs;
end;
$$;
