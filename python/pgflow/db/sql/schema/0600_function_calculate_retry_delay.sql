create or replace function pgflow.calculate_retry_delay(
  base_delay numeric,
  attempts_count int,
  max_delay int default 3600
)
returns int
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
  -- the exponent is clamped before the power so that a huge attempt count cannot overflow
  select least(
    floor(greatest(base_delay, 0) * power(2::numeric, least(greatest(attempts_count, 0), 64))),
    greatest(max_delay, 0)
  )::int;
$$;
