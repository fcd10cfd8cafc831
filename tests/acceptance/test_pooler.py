"""Workers, `pgflow start --wait` and `pgflow db migrate` through PgBouncer in transaction mode.

PgBouncer runs with one server connection per database (`servers.pgbouncer`), so every client
shares it: a session setting or prepared statement one of them left behind would be seen (or
collide) in the next transaction of another.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import WorkerPool, basic_output
from servers import pgbouncer

from pgflow.db.connection import LISTEN_DSN_ENV, POOLED_ENV

Run = Callable[..., subprocess.CompletedProcess[str]]
Conn = psycopg.Connection[Any]

BASIC = "acceptance_flows:basic"
# Longer than every deadline below: a run that completes was claimed after a NOTIFY or a poll
# at the short interval a worker uses without a live listener, never after this one.
LONG_POLL = ("--poll-interval", "600")


@pytest.fixture
def bouncer_dsn(db_dsn: str) -> Iterator[str]:
    with pgbouncer(db_dsn) as dsn:
        yield dsn


def start_wait(run_pgflow: Run, dsn: str, n: int, env: dict[str, str]) -> Any:
    result = run_pgflow(
        "start", "acc_basic", "--input", json.dumps({"n": n}), "--wait", "--timeout", "60",
        "--dsn", dsn, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_worker_and_start_wait_through_pgbouncer_leave_no_session_state(
    bouncer_dsn: str, conn: Conn, tmp_path: Path, run_pgflow: Run
) -> None:
    env = {POOLED_ENV: "1"}
    workers = WorkerPool(bouncer_dsn, tmp_path, env)
    try:
        worker = workers.start([BASIC], *LONG_POLL, conn=conn)
        # more runs than psycopg's default prepare threshold (5 executions of one query)
        for n in range(8):
            assert start_wait(run_pgflow, bouncer_dsn, n, env) == basic_output(n), worker.describe()
        assert "not listening on pgflow_tasks" in worker.log()
        with psycopg.connect(bouncer_dsn, autocommit=True, prepare_threshold=None) as through:
            # the one server connection everybody used
            assert through.execute("show synchronous_commit").fetchone() == ("on",)
            assert through.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
    finally:
        workers.close()
    assert conn.execute(
        "select count(*) from pgflow.step_tasks where status <> 'completed'"
    ).fetchone() == (0,)


def test_a_pooled_worker_listens_on_the_listen_dsn(
    bouncer_dsn: str, db_dsn: str, conn: Conn, tmp_path: Path, run_pgflow: Run
) -> None:
    env = {POOLED_ENV: "1", LISTEN_DSN_ENV: db_dsn}
    workers = WorkerPool(bouncer_dsn, tmp_path, env)
    try:
        worker = workers.start([BASIC], *LONG_POLL, conn=conn)
        assert start_wait(run_pgflow, bouncer_dsn, 3, env) == basic_output(3), worker.describe()
        # it did listen (no "not listening" line), and through the direct DSN: a listener on
        # the pooler would count as alive yet hear nothing, and the run would wait LONG_POLL
        assert "not listening" not in worker.log()
    finally:
        workers.close()


def test_migrate_through_pgbouncer(empty_db_dsn: str, run_pgflow: Run) -> None:
    with pgbouncer(empty_db_dsn, pool_size=2) as dsn:
        env = {POOLED_ENV: "1"}
        migrated = run_pgflow("db", "migrate", "--dsn", dsn, env=env)
        assert migrated.returncode == 0, migrated.stderr
        again = run_pgflow("db", "migrate", "--dsn", dsn, env=env)
        assert again.returncode == 0, again.stderr
        status = run_pgflow("db", "status", "--dsn", dsn, env=env)
        assert status.returncode == 0, status.stderr
        # no session advisory lock left on a server connection: looked at while pgbouncer still
        # keeps its server connections open (they would take their locks with them when it
        # stops), and only in this database (the server is shared with other tests)
        with psycopg.connect(empty_db_dsn, autocommit=True) as direct:
            assert direct.execute(
                "select count(*) from pg_locks where locktype = 'advisory' and database ="
                " (select oid from pg_database where datname = current_database())"
            ).fetchone() == (0,)


def test_a_bad_pooled_value_is_one_clear_line(db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("db", "status", "--dsn", db_dsn, env={POOLED_ENV: "maybe"})
    assert result.returncode != 0
    assert f"{POOLED_ENV}='maybe' is not a yes/no value" in result.stderr
    assert "Traceback" not in result.stderr
