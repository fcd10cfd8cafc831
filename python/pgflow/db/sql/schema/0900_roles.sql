-- Roles (our addition): pgflow_worker runs tasks, pgflow_client starts and watches runs. What
-- each may do is in 0910_grants.sql. Grant a role to a login:
-- `grant pgflow_worker to my_worker_login;`.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'pgflow_worker') then
    create role pgflow_worker nologin;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'pgflow_client') then
    create role pgflow_client nologin;
  end if;
exception
  when insufficient_privilege then
    raise notice 'pgflow: roles pgflow_worker and pgflow_client not created (no CREATEROLE right); '
      'create them and run the grants of schema file 0910_grants.sql by hand to use them';
  when unique_violation then
    null;  -- another database's migration created them at the same moment
end;
$$;
