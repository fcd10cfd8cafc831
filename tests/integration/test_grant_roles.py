"""`grant_roles` when the pgflow roles themselves are missing or have no rights here.

Roles are cluster-wide and other databases' tests use pgflow_worker and pgflow_client, so these
cases point the module at stand-in role names instead of dropping the real roles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgflow.db import roles
from pgflow.errors import GrantError


@pytest.fixture
def stand_in(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    """A role that exists (like pgflow_worker) but was given no rights in this database."""
    name = f"pgflow_stand_in_{uuid.uuid4().hex[:10]}"
    conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_a_missing_pgflow_role_says_how_to_create_it(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"pgflow_missing_{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(roles, "WORKER_ROLE", missing)
    monkeypatch.setitem(roles._PROBE, missing, "pgflow.claim_tasks(text, uuid, int, int)")
    with pytest.raises(GrantError) as caught:
        roles.grant_roles(db_dsn, worker=["postgres"])
    assert str(caught.value).startswith(f"role {missing} does not exist: the migrations create it")
    assert f"create role {missing} nologin" in str(caught.value)


def test_a_pgflow_role_without_rights_here_says_to_run_the_grants(
    db_dsn: str, stand_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "CLIENT_ROLE", stand_in)
    monkeypatch.setitem(roles._PROBE, stand_in, "pgflow.cancel_run(uuid)")
    with pytest.raises(GrantError, match=f"role {stand_in} has no rights in database"):
        roles.grant_roles(db_dsn, client=["postgres"])


def test_the_real_roles_pass_the_checks_in_a_migrated_database(db_dsn: str, stand_in: str) -> None:
    # the probes must hold for the roles the migrations set up, or every grant would fail
    granted = roles.grant_roles(db_dsn, worker=[stand_in], client=[stand_in])
    assert [(g.role, g.login, g.already) for g in granted] == [
        ("pgflow_worker", stand_in, False),
        ("pgflow_client", stand_in, False),
    ]
