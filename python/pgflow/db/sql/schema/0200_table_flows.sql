create table pgflow.flows (
  flow_slug text primary key,
  opt_max_attempts int not null default 3,
  opt_base_delay int not null default 1,
  opt_timeout int not null default 60,
  created_at timestamptz not null default now(),
  constraint slug_is_valid check (pgflow.is_valid_slug(flow_slug)),
  -- a flow slug is also a pgmq queue name: pgmq limits those to 47 characters
  constraint slug_length_fits_queue_name check (length(flow_slug) <= 47),
  constraint opt_max_attempts_is_nonnegative check (opt_max_attempts >= 0),
  constraint opt_base_delay_is_nonnegative check (opt_base_delay >= 0),
  constraint opt_timeout_is_positive check (opt_timeout > 0)
);
-- pgmq lowercases queue names, so two flows that differ only by case would share a queue
create unique index flows_slug_lower_key on pgflow.flows (lower(flow_slug));
