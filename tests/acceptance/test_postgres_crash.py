"""PostgreSQL crashes (`pg_ctl stop -m immediate`) while workers are in the middle of runs and
comes back: the workers reconnect and every run completes, each task once with its output.

The test runs its own cluster (`servers.private_cluster`): the shared test server must not crash.
Claims commit asynchronously, so a claim may be lost in the crash while its worker runs the
task; the task is then claimed again and its first result, naming a lost attempt, changes
nothing. Tasks left started are requeued by the sweep after their timeout (1 s) + 30 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import (
    WorkerPool,
    chaos_diamond,
    chaos_diamond_outputs,
    chaos_map,
    start_run,
    wait_until,
)
from servers import private_cluster

from pgflow.db.migrations import migrate

FLOWS = ["acceptance_flows:chaos_map", "acceptance_flows:chaos_diamond"]
MAP_SIZE = 1000
DIAMONDS = 50
WORKER_OPTIONS = ("--requeue-interval", "1", "--poll-interval", "0.5", "--quiet")


def _query(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """One query on a fresh connection (the server may have been down since the last one)."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()
    except psycopg.OperationalError:
        return []


@pytest.mark.slow
def test_workers_reconnect_after_a_postgres_crash_and_every_run_completes(
    tmp_path: Path,
) -> None:
    with private_cluster() as cluster:
        migrate(cluster.dsn)
        pool = WorkerPool(cluster.dsn, tmp_path)
        try:
            with psycopg.connect(cluster.dsn, autocommit=True) as conn:
                workers = [pool.start(FLOWS, *WORKER_OPTIONS, conn=conn) for _ in range(2)]
                map_run = start_run(conn, chaos_map.slug, list(range(MAP_SIZE)))
                diamonds = {
                    start_run(conn, chaos_diamond.slug, {"n": n}): n for n in range(DIAMONDS)
                }

            def some_done() -> bool:
                rows = _query(
                    cluster.dsn,
                    "select count(*) from pgflow.step_tasks where status = 'completed'",
                )
                return bool(rows) and rows[0][0] >= 100

            wait_until(some_done, timeout=60, what="100 completed tasks before the crash")
            unfinished_before = _query(
                cluster.dsn, "select count(*) from pgflow.runs where status = 'started'"
            )
            assert unfinished_before and unfinished_before[0][0] > 0, "all done before the crash"
            cluster.crash()
            cluster.start()

            def unfinished() -> int:
                rows = _query(
                    cluster.dsn, "select count(*) from pgflow.runs where status = 'started'"
                )
                return int(rows[0][0]) if rows else -1

            wait_until(
                lambda: unfinished() == 0,
                timeout=90,
                what="every run to finish after the crash",
                details=lambda: "\n".join(w.describe()[-2000:] for w in workers),
            )
            assert all(w.alive() for w in workers), "a worker died instead of reconnecting"
        finally:
            pool.close()

        statuses = _query(cluster.dsn, "select status, count(*) from pgflow.runs group by 1")
        assert statuses == [("completed", DIAMONDS + 1)]
        tasks = _query(
            cluster.dsn,
            "select run_id::text, step_slug, task_index, status, output from pgflow.step_tasks",
        )
        assert len(tasks) == MAP_SIZE + DIAMONDS * 4
        for run_id, step, index, status, output in tasks:
            assert status == "completed", (run_id, step, index, status)
            expected = (
                index * 2 if run_id == map_run else chaos_diamond_outputs(diamonds[run_id])[step]
            )
            assert output == expected
        for slug in (chaos_map.slug, chaos_diamond.slug):
            assert _query(cluster.dsn, f"select count(*) from pgmq.q_{slug}") == [(0,)]
        log = "".join(w.log() for w in workers)
        assert "retrying" in log or "reconnect" in log, log[-2000:]
