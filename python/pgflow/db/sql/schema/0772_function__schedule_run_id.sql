-- The id of the run a schedule's tick starts (our addition): the first 128 bits of
-- SHA-256(schedule id, '@', the tick instant in UTC to the microsecond) as an RFC 9562 version 8
-- UUID. The same tick always gets the same id, so a second start of it fails on runs_pkey even
-- if everything else were to go wrong. (uuid5 would need SHA-1, which PostgreSQL's core lacks.)
create or replace function pgflow._schedule_run_id(schedule_id uuid, tick_at timestamptz)
returns uuid
language plpgsql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hex text := encode(sha256(convert_to(
    _schedule_run_id.schedule_id::text || '@'
      || to_char(_schedule_run_id.tick_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'UTF8')), 'hex');
begin
  return (substr(v_hex, 1, 12) || '8' || substr(v_hex, 14, 3)
          || substr('89ab', (('x' || substr(v_hex, 17, 1))::bit(4)::int % 4) + 1, 1)
          || substr(v_hex, 18, 15))::uuid;
end;
$$;
