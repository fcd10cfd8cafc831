-- The differences between two shapes ("first" is p_local, "second" p_db), in pgflow's words, so
-- that tools matching them keep working: the step count, then per index a missing step, or the
-- slug, type, dependencies (sorted and joined), whenUnmet, whenExhausted and the two patterns
-- that differ. A text field absent on either side is not reported (as in pgflow); an absent
-- pattern prints as ''. Runtime options are not part of a shape's identity.
create or replace function pgflow._compare_flow_shapes(p_local jsonb, p_db jsonb)
returns text[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_diffs text[] := '{}';
  v_local jsonb := coalesce(p_local -> 'steps', '[]'::jsonb);
  v_db jsonb := coalesce(p_db -> 'steps', '[]'::jsonb);
  v_n_local int := jsonb_array_length(v_local);
  v_n_db int := jsonb_array_length(v_db);
  v_l jsonb;
  v_d jsonb;
  v_field text;
  v_label text;
  v_l_deps text;
  v_d_deps text;
begin
  if v_n_local <> v_n_db then
    v_diffs := v_diffs || format('Step count differs: %s vs %s', v_n_local, v_n_db);
  end if;

  for i in 0 .. greatest(v_n_local, v_n_db) - 1 loop
    v_l := v_local -> i;
    v_d := v_db -> i;
    if v_l is null then
      v_diffs := v_diffs || format('Step at index %s: missing in first shape (second has ''%s'')',
        i, v_d ->> 'slug');
      continue;
    elsif v_d is null then
      v_diffs := v_diffs || format('Step at index %s: missing in second shape (first has ''%s'')',
        i, v_l ->> 'slug');
      continue;
    end if;

    if v_l ->> 'slug' <> v_d ->> 'slug' then
      v_diffs := v_diffs || format('Step at index %s: slug differs ''%s'' vs ''%s''',
        i, v_l ->> 'slug', v_d ->> 'slug');
    end if;
    if v_l ->> 'stepType' <> v_d ->> 'stepType' then
      v_diffs := v_diffs || format('Step at index %s: type differs ''%s'' vs ''%s''',
        i, v_l ->> 'stepType', v_d ->> 'stepType');
    end if;

    select coalesce(string_agg(d, ', ' order by d), '') into v_l_deps
      from jsonb_array_elements_text(coalesce(v_l -> 'dependencies', '[]'::jsonb)) d;
    select coalesce(string_agg(d, ', ' order by d), '') into v_d_deps
      from jsonb_array_elements_text(coalesce(v_d -> 'dependencies', '[]'::jsonb)) d;
    if v_l_deps <> v_d_deps then
      v_diffs := v_diffs || format('Step at index %s: dependencies differ [%s] vs [%s]',
        i, v_l_deps, v_d_deps);
    end if;

    foreach v_field in array array['whenUnmet', 'whenExhausted'] loop
      if v_l ->> v_field <> v_d ->> v_field then
        v_diffs := v_diffs || format('Step at index %s: %s differs ''%s'' vs ''%s''',
          i, v_field, v_l ->> v_field, v_d ->> v_field);
      end if;
    end loop;
    foreach v_field in array array['requiredInputPattern', 'forbiddenInputPattern'] loop
      if v_l -> v_field is distinct from v_d -> v_field then
        v_diffs := v_diffs || format('Step at index %s: %s differs ''%s'' vs ''%s''',
          i, v_field, coalesce((v_l -> v_field)::text, ''), coalesce((v_d -> v_field)::text, ''));
      end if;
    end loop;
  end loop;
  return v_diffs;
end;
$$;
