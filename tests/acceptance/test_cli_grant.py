"""`pgflow db grant`, then the logins it made members at work: a real `pgflow worker` running as
the worker login completes a run that the client login started with `pgflow start --wait`, and
each login is refused what its role may not do.

The logins are created for each test (LOGIN NOSUPERUSER NOCREATEROLE, unique names) and dropped
after it; roles are cluster-wide, so nothing here drops or changes pgflow_worker/pgflow_client.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from acceptance_flows import (
    WorkerPool,
    basic_output,
    start_run,
    subprocess_env,
)
from psycopg import sql

Run = Callable[..., subprocess.CompletedProcess[str]]
Conn = psycopg.Connection[Any]

BASIC = "acceptance_flows:basic"
GATED = "acceptance_flows:gated"


@dataclass
class Logins:
    worker: str
    client: str
    worker_dsn: str
    client_dsn: str


def dsn_as(dsn: str, user: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture
def logins(pg_admin_dsn: str, db_dsn: str) -> Iterator[Logins]:
    """Two fresh logins that belong to no role yet; dropped (with their sessions) after."""
    suffix = uuid.uuid4().hex[:10]
    names = [f"pgflow_grant_w_{suffix}", f"pgflow_grant_c_{suffix}"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(
                sql.SQL("create role {} login nosuperuser nocreaterole nocreatedb").format(
                    sql.Identifier(name)
                )
            )
        try:
            yield Logins(names[0], names[1], dsn_as(db_dsn, names[0]), dsn_as(db_dsn, names[1]))
        finally:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = any(%s)",
                (names,),
            )
            for name in names:
                admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def grant(run_pgflow: Run, dsn: str, *options: str) -> subprocess.CompletedProcess[str]:
    return run_pgflow("db", "grant", *options, "--dsn", dsn)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def member_of(conn: Conn, login: str) -> set[str]:
    rows = conn.execute(
        "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid "
        "join pg_roles u on u.oid = m.member where u.rolname = %s",
        (login,),
    ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def granted(logins: Logins, db_dsn: str, run_pgflow: Run) -> Logins:
    result = grant(run_pgflow, db_dsn, "--worker", logins.worker, "--client", logins.client)
    assert result.returncode == 0, result.stderr
    return logins


# -- the command ----------------------------------------------------------------------------------


def test_grant_makes_each_login_a_member_of_its_role_once(
    logins: Logins, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    result = grant(run_pgflow, db_dsn, "--worker", logins.worker, "--client", logins.client)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"granted pgflow_worker to {logins.worker}",
        f"granted pgflow_client to {logins.client}",
    ]
    assert member_of(conn, logins.worker) == {"pgflow_worker"}
    assert member_of(conn, logins.client) == {"pgflow_client"}

    again = grant(run_pgflow, db_dsn, "--client", logins.client)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{logins.client} already has pgflow_client"]


def test_grant_errors_are_one_line(
    logins: Logins, conn: Conn, db_dsn: str, empty_db_dsn: str, run_pgflow: Run
) -> None:
    missing = one_error_line(grant(run_pgflow, db_dsn, "--worker", "pgflow_no_such_login_x"))
    assert "role 'pgflow_no_such_login_x' does not exist: create the login first" in missing

    nothing = one_error_line(grant(run_pgflow, db_dsn))
    assert "nothing to grant" in nothing

    not_migrated = one_error_line(grant(run_pgflow, empty_db_dsn, "--worker", logins.worker))
    assert "has no pgflow schema: run `pgflow db migrate` first" in not_migrated

    # a login without CREATEROLE or ADMIN OPTION may not hand out roles, its own or another's
    conn.execute(sql.SQL("grant pgflow_worker to {}").format(sql.Identifier(logins.worker)))
    refused = one_error_line(grant(run_pgflow, logins.worker_dsn, "--client", logins.client))
    assert f"'{logins.worker}' may not grant pgflow_client" in refused
    assert "connect as a superuser" in refused
    # all or nothing: a failure leaves no partial grant behind
    partial = grant(run_pgflow, db_dsn, "--client", logins.client, "--worker", "pgflow_no_such_x")
    one_error_line(partial)
    assert member_of(conn, logins.client) == set()


# -- the logins at work ---------------------------------------------------------------------------


def test_a_worker_login_runs_what_a_client_login_starts(
    granted: Logins, conn: Conn, tmp_path: Path, run_pgflow: Run
) -> None:
    superusers = conn.execute(
        "select rolname from pg_roles where rolname = any(%s) and (rolsuper or rolcreaterole)",
        ([granted.worker, granted.client],),
    ).fetchall()
    assert superusers == []
    # the worker login compiles the (missing) flow itself, registers, claims and reports
    pool = WorkerPool(granted.worker_dsn, tmp_path)
    try:
        worker = pool.start([BASIC], conn=conn)
        result = run_pgflow(
            "start",
            "acc_basic",
            "--input",
            '{"n": 4}',
            "--wait",
            "--timeout",
            "60",
            "--dsn",
            granted.client_dsn,
        )
        assert result.returncode == 0, result.stderr + worker.describe()
        assert json.loads(result.stdout) == basic_output(4)
        run_by = conn.execute(
            "select w.function_name from pgflow.step_tasks t join pgflow.workers w "
            "on w.worker_id = t.last_worker_id where t.flow_slug = 'acc_basic'"
        ).fetchall()
        assert run_by and {row[0] for row in run_by} == {worker.function_name}
        sessions = conn.execute(
            "select distinct usename from pg_stat_activity where datname = current_database() "
            "and application_name = 'pgflow'"
        ).fetchall()
        assert (granted.worker,) in sessions
        worker.send(signal.SIGTERM)
        assert worker.wait_exit(60) == 0, worker.describe()
    finally:
        pool.close()


def test_the_worker_login_may_not_cancel_delete_prune_or_write(
    granted: Logins, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    conn.execute("select pgflow.create_flow('grant_flow')")
    conn.execute("select pgflow.add_step('grant_flow', 'only')")
    run_id = start_run(conn, "grant_flow", {"x": 1})

    cancelled = one_error_line(run_pgflow("cancel", run_id, "--dsn", granted.worker_dsn))
    assert "permission denied for function cancel_run" in cancelled

    denied = (
        ("select pgflow.delete_flow_and_data('grant_flow')", ()),
        ("select pgflow.prune_data_older_than('0 seconds')", ()),
        ("delete from pgflow.runs", ()),
        ("update pgflow.step_tasks set status = 'completed'", ()),
        ("truncate pgflow.flows cascade", ()),
        ("create table pgflow.mine (x int)", ()),
        ("create table public.mine (x int)", ()),
        ("select * from pgmq.q_grant_flow", ()),
        ("select pgflow._fail_run(%s, 'x')", (run_id,)),
    )
    with psycopg.connect(granted.worker_dsn, autocommit=True) as worker:
        for statement, params in denied:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(statement, params)
    assert conn.execute(
        "select status from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone() == ("started",)
    assert conn.execute(
        "select count(*) from pgflow.steps where flow_slug = 'grant_flow'"
    ).fetchone() == (1,)


def test_a_worker_login_cannot_replace_a_changed_flow_from_the_cli(
    granted: Logins, conn: Conn, run_pgflow: Run, tmp_path: Path
) -> None:
    pool = WorkerPool(granted.worker_dsn, tmp_path)
    try:
        first = pool.start([BASIC], conn=conn)
        first.send(signal.SIGTERM)
        assert first.wait_exit(60) == 0, first.describe()
    finally:
        pool.close()
    result = run_pgflow(
        "worker",
        "acceptance_flows:basic_changed",
        "--allow-data-loss",
        "--dsn",
        granted.worker_dsn,
        env={"PYTHONPATH": subprocess_env()["PYTHONPATH"]},
    )
    line = one_error_line(result)
    assert "only the owner" in line, line
    steps = conn.execute(
        "select step_slug from pgflow.steps where flow_slug = 'acc_basic' order by step_index"
    ).fetchall()
    assert steps != [("double",)]


def test_the_client_login_may_not_claim_or_report(
    granted: Logins, conn: Conn, tmp_path: Path, run_pgflow: Run
) -> None:
    conn.execute("select pgflow.create_flow('grant_flow')")
    conn.execute("select pgflow.add_step('grant_flow', 'only')")
    worker_id = uuid.uuid4()
    with psycopg.connect(granted.client_dsn, autocommit=True) as client:
        row = client.execute("select run_id from pgflow.start_flow('grant_flow', '{}')").fetchone()
        assert row is not None
        run_id = row[0]
        denied = (
            ("select pgflow.register_worker(%s, 'grant_flow', 'x')", (worker_id,)),
            ("select * from pgflow.claim_tasks('grant_flow', %s, 10)", (worker_id,)),
            ("select * from pgflow.read_with_poll('grant_flow', 30, 10, 0)", ()),
            (
                "select * from pgflow.start_tasks('grant_flow', array[1]::bigint[], %s)",
                (worker_id,),
            ),
            (
                "select pgflow.report_tasks(%s, %s, %s, %s::jsonb)",
                ([run_id], ["only"], [0], "[42]"),
            ),
            ("select pgflow.complete_task(%s, 'only', 0, '1'::jsonb)", (run_id,)),
            ("select pgflow.fail_task(%s, 'only', 0, 'no')", (run_id,)),
            ("select pgflow.requeue_stalled_tasks()", ()),
            ("select pgflow.prune_data_older_than('0 seconds')", ()),
            ("delete from pgflow.runs", ()),
            ("select * from pgmq.q_grant_flow", ()),
        )
        for statement, params in denied:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                client.execute(statement, params)
        # what it may: read its run and cancel it
        cancelled = client.execute("select pgflow.cancel_run(%s)", (run_id,)).fetchone()
        assert cancelled is not None
    assert conn.execute(
        "select status from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone() == ("cancelled",)

    # a `pgflow worker` as the client login stops at once with one line
    result = run_pgflow(
        "worker",
        GATED,
        "--dsn",
        granted.client_dsn,
        env={"PYTHONPATH": subprocess_env()["PYTHONPATH"]},
        timeout=60,
    )
    assert "permission denied for function register_worker" in one_error_line(result)
