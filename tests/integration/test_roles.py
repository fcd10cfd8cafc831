"""The pgflow_worker and pgflow_client roles: enough to run flows, nothing more."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
import pytest

LOGIN = "pgflow_roles_test_login"


@pytest.fixture
def login_dsn(conn: psycopg.Connection[tuple[object, ...]], db_dsn: str) -> Iterator[str]:
    conn.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{LOGIN}') "
        f"then create role {LOGIN} login; end if; end $$"
    )
    conn.execute(f"grant pgflow_worker, pgflow_client to {LOGIN}")
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    params["user"] = LOGIN
    params.pop("password", None)
    yield psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def test_roles_exist_and_public_has_no_rights(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    roles = {
        r[0] for r in conn.execute("select rolname from pg_roles where rolname like 'pgflow_%'")
    }
    assert {"pgflow_worker", "pgflow_client"} <= roles
    public_functions = conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'pgflow' and has_function_privilege('public', p.oid, 'execute')"
    ).fetchall()
    assert public_functions == []


def test_a_worker_login_runs_a_flow_but_cannot_write_tables(
    conn: psycopg.Connection[tuple[object, ...]], login_dsn: str
) -> None:
    conn.execute("select pgflow.create_flow('roles_flow')")
    conn.execute("select pgflow.add_step('roles_flow', 'only')")
    worker_id = uuid.uuid4()
    with psycopg.connect(login_dsn, autocommit=True) as worker:
        worker.execute("select pgflow.register_worker(%s, 'roles_flow', 'test')", (worker_id,))
        row = worker.execute(
            "select run_id from pgflow.start_flow('roles_flow', '{\"x\": 1}')"
        ).fetchone()
        assert row is not None
        run_id = row[0]
        rows = worker.execute(
            "select kind, step_slug from pgflow.claim_tasks('roles_flow', %s, 10)", (worker_id,)
        ).fetchall()
        assert ("task", "only") in rows
        worker.execute(
            "select pgflow.report_tasks(%s, %s, %s, %s::jsonb)", ([run_id], ["only"], [0], "[42]")
        )
        status = worker.execute(
            "select status, output from pgflow.runs where run_id = %s", (run_id,)
        ).fetchone()
        assert status == ("completed", {"only": 42})

        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for table runs"
        ):
            worker.execute("delete from pgflow.runs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="delete_flow_and_data"):
            worker.execute("select pgflow.delete_flow_and_data('roles_flow')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="_fail_run"):
            worker.execute("select pgflow._fail_run(%s, 'x')", (run_id,))
