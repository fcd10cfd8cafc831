"""Worker life cycle against real Postgres: registration, heartbeats, deprecation, stopping."""

from __future__ import annotations

import threading
import time

import psycopg
import worker_flows

from pgflow.worker import Worker

DEADLINE = 30.0


def _wait(predicate: object, what: str) -> None:
    assert callable(predicate)
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_deprecated_worker_finishes_and_marks_itself_stopped(db_dsn: str) -> None:
    worker = Worker(
        [worker_flows.chain], dsn=db_dsn, heartbeat_interval=0.1, install_signal_handlers=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select worker_id, queue_name, stopped_at from pgflow.workers"
        ).fetchall()
        assert [(r[1], r[2]) for r in rows] == [(worker_flows.chain.slug, None)]
        first_beat = conn.execute("select last_heartbeat_at from pgflow.workers").fetchone()

        def beat_moved() -> bool:
            row = conn.execute("select last_heartbeat_at from pgflow.workers").fetchone()
            return row != first_beat

        _wait(beat_moved, "a heartbeat")
        conn.execute("update pgflow.workers set deprecated_at = now()")
        assert worker.wait_stopped(DEADLINE), "a deprecated worker must stop by itself"
        thread.join(DEADLINE)
        stopped = conn.execute("select stopped_at from pgflow.workers").fetchone()
        assert stopped is not None and stopped[0] is not None
