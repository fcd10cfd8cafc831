"""`pgflow.db.prune.prune`: what `pgflow.prune_data_older_than` deleted, and a dry run that
counts the same without deleting. (What the SQL deletes is tested in test_contract_prune.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import psycopg.conninfo
import pytest
from contract_helpers import (
    Conn,
    complete_task,
    define_flow,
    fail_task,
    read_and_start,
    register_worker,
    scalar,
    single,
    start_flow,
)
from psycopg import sql

from pgflow.db.prune import Pruned, prune
from pgflow.errors import MigrationError, PgflowError


def _finished_runs(conn: Conn) -> None:
    """Two finished runs (one completed, one failed), one still running, one worker."""
    define_flow(conn, "prune_api", [single("a", max_attempts=1)])
    worker = register_worker(conn, "prune_api")
    for fail in (False, True, None):
        run_id = start_flow(conn, "prune_api", {})["run_id"]
        if fail is None:
            continue
        read_and_start(conn, "prune_api", worker)
        if fail:
            fail_task(conn, run_id, "a", 0, "fatal")
        else:
            complete_task(conn, run_id, "a", 0, "ok")


def _rows(conn: Conn) -> dict[str, int]:
    return {
        table: int(scalar(conn, f"select count(*) from pgflow.{table}"))
        for table in ("runs", "step_states", "step_tasks", "workers")
    } | {"archived": int(scalar(conn, "select count(*) from pgmq.a_prune_api"))}


def test_a_dry_run_counts_what_a_prune_then_deletes(conn: Conn, db_dsn: str) -> None:
    _finished_runs(conn)
    before = _rows(conn)

    # nothing is older than an hour
    recent = prune(db_dsn, timedelta(hours=1))
    assert recent.total == 0
    assert _rows(conn) == before

    counted = prune(db_dsn, timedelta(0), dry_run=True)
    assert counted.dry_run
    assert _rows(conn) == before  # rolled back
    assert (counted.runs, counted.step_states, counted.step_tasks, counted.workers) == (2, 2, 2, 1)
    assert counted.archived_messages == 2

    deleted = prune(db_dsn, timedelta(0))
    assert deleted == Pruned(**{**counted.__dict__, "dry_run": False})
    after = _rows(conn)
    assert after == {
        "runs": before["runs"] - 2,
        "step_states": before["step_states"] - 2,
        "step_tasks": before["step_tasks"] - 2,
        "workers": before["workers"] - 1,
        "archived": before["archived"] - 2,
    }
    assert scalar(conn, "select status from pgflow.runs") == "started"


@pytest.fixture
def worker_login(conn: Conn, db_dsn: str) -> Iterator[str]:
    name = f"pgflow_prune_{uuid.uuid4().hex[:10]}"
    conn.execute(sql.SQL("create role {} login nosuperuser").format(sql.Identifier(name)))
    conn.execute(sql.SQL("grant pgflow_worker, pgflow_client to {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    params["user"] = name
    yield psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (name,)
    )
    conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_only_the_owner_may_prune(worker_login: str) -> None:
    with pytest.raises(PgflowError, match="may not prune: only the owner of schema pgflow"):
        prune(worker_login, timedelta(days=7))


def test_an_unmigrated_database_says_to_migrate(empty_db_dsn: str) -> None:
    with pytest.raises(MigrationError, match="run `pgflow db migrate` first"):
        prune(empty_db_dsn, timedelta(days=7))


def test_a_negative_age_is_refused(db_dsn: str) -> None:
    with pytest.raises(PgflowError, match="must not be negative"):
        prune(db_dsn, timedelta(seconds=-1))
