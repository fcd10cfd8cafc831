-- Records the serializer a shape's options name (`"serializer": "<name>"`), or forgets it when
-- they name none: called where a shape's options are applied (a flow created or verified).
create or replace function pgflow._record_serializer(p_flow_slug text, p_shape jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := p_shape #>> '{options,serializer}';
begin
  if v_name is null then
    delete from pgflow.flow_serializers s where s.flow_slug = p_flow_slug;
  else
    insert into pgflow.flow_serializers (flow_slug, serializer) values (p_flow_slug, v_name)
    on conflict (flow_slug) do update set serializer = excluded.serializer;
  end if;
end;
$$;
