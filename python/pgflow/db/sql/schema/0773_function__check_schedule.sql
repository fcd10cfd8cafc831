-- What every way of writing a schedule checks first (our addition), with messages that say what
-- to give instead (SQLSTATE 22023). The cron expression itself is parsed by the workers
-- (cronsim); the table's constraint keeps its shape to five or six fields.
create or replace function pgflow._check_schedule(schedule_name text, cron text, timezone text,
                                                  catch_up int)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgflow.is_valid_slug(_check_schedule.schedule_name) then
    raise exception 'schedule name % is not valid: use 1 to 128 letters, digits and underscores, '
      'not starting with a digit', coalesce(to_json(_check_schedule.schedule_name)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.cron is null
     or _check_schedule.cron !~ '^\s*\S+(\s+\S+){4,5}\s*$' or length(_check_schedule.cron) > 256 then
    raise exception 'cron expression % must have 5 fields (minute hour day month weekday) or 6 '
      '(with seconds first)', coalesce(to_json(_check_schedule.cron)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.timezone is null or length(_check_schedule.timezone) not between 1 and 64
     or not exists (select 1 from pg_catalog.pg_timezone_names z
                     where z.name = _check_schedule.timezone) then
    raise exception 'time zone % is not known: give an IANA name such as "UTC" or "Europe/Paris"',
      coalesce(to_json(_check_schedule.timezone)::text, 'NULL')
      using errcode = '22023';
  end if;
  if _check_schedule.catch_up is null or _check_schedule.catch_up not between 0 and 1000 then
    raise exception 'catch_up must be 0 (skip missed ticks) to 1000, got %',
      coalesce(_check_schedule.catch_up::text, 'NULL')
      using errcode = '22023';
  end if;
end;
$$;
