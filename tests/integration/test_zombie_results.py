"""Workers facing results and messages that no longer (or never did) match a task.

A zombie result comes from a worker that stalled so long that its task was requeued and
completed by another worker: when it finally reports, nothing changes. Messages in a flow's
queue that match no claimable task (a second message for a task, one naming no task, one that is
not even an object) are archived by the claim, and the runs around them complete.
The SQL of both is tested function by function in test_claim_report_races.py; these tests run
real workers.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest
from contract_helpers import Conn, one, rows, scalar
from worker_helpers import RunningWorker, wait_until

from pgflow.client import Client
from pgflow.flow import Flow
from pgflow.worker import Worker

SLUG = "wt_zombie"
a_entered = threading.Event()
a_release = threading.Event()

# Two definitions of one flow (same shape, so both workers serve it): A's handler blocks until
# the test releases it; B's returns at once. Their outputs differ, so the result that counted
# shows who reported it.
zombie_a = Flow(SLUG, max_attempts=5, base_delay=0, timeout=5)
zombie_b = Flow(SLUG, max_attempts=5, base_delay=0, timeout=5)


@zombie_a.step(slug="only")
def only_a(run_input: Any) -> str:
    a_entered.set()
    if not a_release.wait(60):
        raise TimeoutError("the test never released worker A")
    return "from A"


@zombie_b.step(slug="only")
def only_b(run_input: Any) -> str:
    return "from B"


def _worker(flow: Flow, dsn: str) -> RunningWorker:
    running = RunningWorker(
        Worker(
            [flow],
            dsn=dsn,
            concurrency=1,
            prefetch=0,
            poll_interval=0.2,
            requeue_interval=3600,  # the test requeues by hand, at the moment it chooses
            shutdown_grace=30,
            install_signal_handlers=False,
        )
    )
    running.start()
    return running


def _task(conn: Conn, run_id: str) -> dict[str, Any]:
    return one(
        conn,
        "select status, attempts_count, output, last_worker_id::text, completed_at, message_id "
        "from pgflow.step_tasks where run_id = %s and step_slug = 'only'",
        (run_id,),
    )


@pytest.fixture(autouse=True)
def _reset_events() -> None:
    a_entered.clear()
    a_release.clear()


def test_a_zombie_worker_reporting_after_its_task_completed_elsewhere_changes_nothing(
    db_dsn: str, conn: Conn
) -> None:
    worker_a = _worker(zombie_a, db_dsn)
    worker_b: RunningWorker | None = None
    try:
        with Client(db_dsn) as client:
            run_id = client.start(SLUG, {"n": 1})
            assert a_entered.wait(30), "worker A never ran the task"
            # A stalls: make its task look abandoned and let the sweep requeue it
            conn.execute(
                "update pgflow.step_tasks set started_at = now() - interval '1 hour',"
                " queued_at = now() - interval '2 hours' where run_id = %s",
                (run_id,),
            )
            assert scalar(conn, "select pgflow.requeue_stalled_tasks()") == 1
            worker_b = _worker(zombie_b, db_dsn)
            run = worker_b.finish(client, run_id)
            assert (run.status, run.output) == ("completed", {"only": "from B"})
            before = _task(conn, run_id)
            assert (before["status"], before["attempts_count"]) == ("completed", 2)

            a_release.set()  # A wakes up and reports attempt 1
            worker_a.stop()  # a graceful stop sends every result it holds before it returns
            assert worker_a.worker.stats.completed + worker_a.worker.stats.failed == 1
    finally:
        a_release.set()
        for running in (worker_a, worker_b):
            if running is not None and running.thread.is_alive():
                running.stop()
    assert _task(conn, run_id) == before
    assert one(conn, "select status, output from pgflow.runs where run_id = %s", (run_id,)) == {
        "status": "completed",
        "output": {"only": "from B"},
    }
    assert scalar(conn, f"select count(*) from pgmq.q_{SLUG}") == 0


def test_duplicate_foreign_and_malformed_messages_are_archived_and_runs_complete(
    db_dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow.worker")
    a_release.set()  # worker A's handler returns at once here
    with Client(db_dsn) as client:
        client.start(zombie_a, {"n": 0})  # compiles the flow; no worker yet
        run_id = client.start(SLUG, {"n": 1})
        real = _task(conn, run_id)["message_id"]
        strays = [
            # a second message for the same task
            scalar(
                conn,
                f"select pgmq.send(%s, message) from pgmq.q_{SLUG} where msg_id = %s",
                (SLUG, real),
            ),
            # one that names no task
            scalar(
                conn,
                "select pgmq.send(%s, %s::jsonb)",
                (SLUG, '{"run_id": "00000000-0000-0000-0000-000000000000", "step_slug": "x"}'),
            ),
            # one that is no task message at all
            scalar(conn, "select pgmq.send(%s, %s::jsonb)", (SLUG, '"not an object"')),
        ]
        worker = _worker(zombie_a, db_dsn)
        try:
            run = worker.finish(client, run_id)
            assert (run.status, run.output) == ("completed", {"only": "from A"})
            wait_until(
                lambda: scalar(conn, f"select count(*) from pgmq.q_{SLUG}") == 0,
                "the queue to be empty",
            )
        finally:
            worker.stop()
    archived = {r["msg_id"] for r in rows(conn, f"select msg_id from pgmq.a_{SLUG}")}
    assert set(strays) <= archived
    # and the worker said so, naming each of them
    said = " ".join(
        r.getMessage() for r in caplog.records if "that no task could use" in r.getMessage()
    )
    for msg_id in strays:
        assert re.search(rf"\b{msg_id}\b", said), (msg_id, said)
    assert scalar(conn, "select count(*) from pgflow.step_tasks where status <> 'completed'") == 0
