"""Membership in the pgflow roles: `grant_roles` (and `pgflow db grant`) makes a login a
`pgflow_worker` or a `pgflow_client`.

The migrations create the two roles (when the migrating role may create roles) and give them
their rights in each database they migrate (schema files `0900_roles.sql`, `0910_grants.sql`);
docs/security.md says what each may do. Granting membership is a plain `GRANT role TO login`;
this module checks first what would make it useless or fail, so each case gets one line saying
what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgflow.db.connection import connect, scalar
from pgflow.errors import GrantError

WORKER_ROLE = "pgflow_worker"
CLIENT_ROLE = "pgflow_client"

# A function only the role may call: if the role lacks it in this database, the grants of
# 0910_grants.sql never ran here (the roles were created after this database was migrated).
_PROBE = {
    WORKER_ROLE: "pgflow.claim_tasks(text, uuid, int, int)",
    CLIENT_ROLE: "pgflow.cancel_run(uuid)",
}


@dataclass(frozen=True)
class Granted:
    role: str
    """`pgflow_worker` or `pgflow_client`."""
    login: str
    already: bool
    """The login was a member before (nothing changed)."""


def grant_roles(
    dsn: str, *, worker: Sequence[str] = (), client: Sequence[str] = ()
) -> list[Granted]:
    """Grant `pgflow_worker` to each login in `worker` and `pgflow_client` to each in `client`.

    All or nothing, in one transaction. Raises `GrantError` when a login does not exist, when
    the connected role may not grant, or when this database has no pgflow schema or roles.
    """
    wanted = [(WORKER_ROLE, login) for login in worker] + [(CLIENT_ROLE, login) for login in client]
    if not wanted:
        raise GrantError("nothing to grant: name a login with --worker and/or --client")
    with connect(dsn) as conn, conn.transaction():
        _check_schema(conn)
        for role in dict.fromkeys(role for role, _ in wanted):
            _check_role(conn, role)
        done: list[Granted] = []
        for role, login in wanted:
            done.append(_grant(conn, role, login))
        return done


def _check_schema(conn: psycopg.Connection[Any]) -> None:
    if scalar(conn, "select to_regnamespace('pgflow') is null"):
        raise GrantError(
            f"database {conn.info.dbname!r} has no pgflow schema: run `pgflow db migrate` "
            "first, then grant"
        )


def _check_role(conn: psycopg.Connection[Any], role: str) -> None:
    if not scalar(conn, "select exists (select from pg_roles where rolname = %s)", (role,)):
        raise GrantError(
            f"role {role} does not exist: the migrations create it only when the role that "
            "migrates may create roles (CREATEROLE); as a superuser run `create role "
            f"{role} nologin`, then the grants of pgflow's schema file 0910_grants.sql"
        )
    if not scalar(conn, "select has_function_privilege(%s, %s, 'execute')", (role, _PROBE[role])):
        raise GrantError(
            f"role {role} has no rights in database {conn.info.dbname!r} (it was created after "
            "this database was migrated): as the owner of schema pgflow run the grants of "
            "pgflow's schema file 0910_grants.sql"
        )


def _grant(conn: psycopg.Connection[Any], role: str, login: str) -> Granted:
    found = conn.execute(
        "select exists (select from pg_auth_members m join pg_roles r on r.oid = m.roleid "
        "join pg_roles u on u.oid = m.member where r.rolname = %s and u.rolname = %s), "
        "exists (select from pg_roles where rolname = %s)",
        (role, login, login),
    ).fetchone()
    assert found is not None
    member, exists = found
    if not exists:
        raise GrantError(
            f"role {login!r} does not exist: create the login first (`create role "
            f"{sql.Identifier(login).as_string(conn)} login password '...'`), then grant"
        )
    if member:
        return Granted(role, login, already=True)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(login))
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise GrantError(
            f"{conn.info.user!r} may not grant {role} ({exc.diag.message_primary}): connect "
            f"as a superuser, or as a role with CREATEROLE or with ADMIN OPTION on {role}"
        ) from exc
    except psycopg.errors.InvalidGrantOperation as exc:
        raise GrantError(f"cannot grant {role} to {login!r}: {exc.diag.message_primary}") from exc
    return Granted(role, login, already=False)
