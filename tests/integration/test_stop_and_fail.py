"""A stopping worker gives its tasks back at once, and failures that must not be retried.

- Tasks a worker claimed but never started go back as if never claimed (no attempt counted);
  tasks still running when its grace period ends count a failed attempt ("WorkerStopped") and are
  queued again at once, without backoff, so other workers take them now, not after their
  timeout; a task longer than any grace period still ends once its attempts are used up.
- A handler that raises `pgflow.Fail`, and a task whose input does not fit its handler's type,
  fail at once (the attempts left are not made) and the step's when_exhausted applies.

The flows retry after 60 s or more and time out after 600 s, so a test that passes within its
deadline shows the task did not wait for a backoff or a timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import retry_flows as flows
from contract_helpers import Conn, rows, seconds_until_visible
from worker_helpers import (
    ALL_MODES,
    BATCHED,
    Mode,
    modes,
    start_worker,
    wait_until,
)

from pgflow.client import Client


def _tasks(conn: Conn, run_id: str) -> list[dict[str, Any]]:
    return rows(
        conn,
        "select step_slug, task_index, status, attempts_count, error_message, message_id"
        " from pgflow.step_tasks where run_id = %s order by step_slug, task_index",
        (run_id,),
    )


# -- pgflow.Fail and inputs that cannot fit -------------------------------------------------------


@modes(*ALL_MODES)
def test_fail_skips_the_attempts_left(db_dsn: str, conn: Conn, mode: Mode) -> None:
    worker = start_worker([flows.refuse], db_dsn, mode)
    try:
        with Client(db_dsn) as client:
            run = worker.run_flow(client, flows.refuse, {"id": 7})
            payable = worker.run_flow(client, flows.refuse, {"id": 8, "ok": True})
    finally:
        worker.stop()
    assert run.status == "failed"
    (failed,) = _tasks(conn, run.run_id)
    assert (failed["status"], failed["attempts_count"]) == ("failed", 1)
    assert failed["error_message"] == "Fail: order 7 is not payable (attempt 1)"
    assert payable.status == "completed"


@modes(*BATCHED)
def test_fail_applies_when_exhausted(db_dsn: str, conn: Conn, mode: Mode) -> None:
    worker = start_worker([flows.refuse_skip], db_dsn, mode)
    try:
        with Client(db_dsn) as client:
            run = worker.run_flow(client, flows.refuse_skip, {})
    finally:
        worker.stop()
    assert run.status == "completed"
    assert run.output == {"main": "done"}
    by_step = {t["step_slug"]: t for t in _tasks(conn, run.run_id)}
    assert by_step["optional"]["attempts_count"] == 1
    state = rows(
        conn,
        "select status, skip_reason from pgflow.step_states where run_id = %s"
        " and step_slug = 'optional'",
        (run.run_id,),
    )
    assert state == [{"status": "skipped", "skip_reason": "handler_failed"}]


@modes(*ALL_MODES)
def test_an_input_that_does_not_fit_its_type_fails_at_once(
    db_dsn: str, conn: Conn, mode: Mode
) -> None:
    worker = start_worker([flows.typed_root], db_dsn, mode)
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.typed_root.slug, {"amount": "ten", "currency": "EUR"})
            run = worker.finish(client, run_id)
    finally:
        worker.stop()
    assert run.status == "failed"
    (failed,) = _tasks(conn, run_id)
    assert (failed["status"], failed["attempts_count"]) == ("failed", 1)
    assert failed["error_message"].startswith("InputValidationError: ")
    assert "amount" in failed["error_message"]


# -- a stopping worker ----------------------------------------------------------------------------


@modes(*(m for m in BATCHED if m.executor != "inline"), Mode("thread", per_task=True))
def test_a_stopping_worker_gives_its_tasks_back_at_once(
    db_dsn: str, conn: Conn, mode: Mode, tmp_path: Path
) -> None:
    gate, running = tmp_path / "gate", tmp_path / "running"
    items = [{"n": 0, "gate": str(gate), "running": str(running)}, {"n": 1}, {"n": 2}]
    first = start_worker([flows.outlast], db_dsn, mode, concurrency=1, shutdown_grace=0.5)
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.outlast, items)
            # the handler itself, not only the task's status: a claimed task may still wait in
            # the executor, and then it is given back without an attempt
            wait_until(running.exists, "task 0's handler running on the first worker")
            first.stop()
            back = _tasks(conn, run_id)
            # the running task: its attempt failed, and it is queued again without backoff
            assert (back[0]["status"], back[0]["attempts_count"]) == ("queued", 1)
            assert back[0]["error_message"].startswith("WorkerStopped: the worker stopped")
            assert seconds_until_visible(conn, flows.outlast.slug, back[0]["message_id"]) <= 0
            # the others never started (prefetched, or waiting in the executor): no attempt
            for waiting in back[1:]:
                assert waiting["status"] in ("queued", "completed"), waiting
                if waiting["status"] == "queued":
                    assert waiting["attempts_count"] == 0, waiting
                    assert (
                        seconds_until_visible(conn, flows.outlast.slug, waiting["message_id"]) <= 0
                    )
            second = start_worker([flows.outlast], db_dsn, mode)
            try:
                run = second.finish(client, run_id)
            finally:
                second.stop()
            attempts = client.attempts(run_id)
    finally:
        gate.touch()
    assert run.status == "completed"
    assert run.output == {"hold": [0, 1, 2]}
    assert _tasks(conn, run_id)[0]["attempts_count"] == 2
    # task 0: cut off on the first worker, completed on the second; the tasks given back
    # unstarted have one attempt only, the one that ran them
    cut, done = (a for a in attempts if a.task_index == 0)
    assert (cut.attempt, cut.outcome, done.attempt, done.outcome) == (
        1,
        "worker_stopped",
        2,
        "completed",
    )
    assert cut.error_message is not None and cut.error_message.startswith("WorkerStopped: ")
    assert cut.worker_id == str(first.worker.worker_ids[flows.outlast.slug])
    assert done.worker_id == str(second.worker.worker_ids[flows.outlast.slug])
    assert [(a.task_index, a.attempt) for a in attempts if a.task_index > 0] == [(1, 1), (2, 1)]


def test_a_task_longer_than_any_grace_period_ends_with_its_attempts(
    db_dsn: str, conn: Conn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    mode = Mode("thread")
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.forever, {"gate": str(gate)})
            for attempt in (1, 2):
                worker = start_worker([flows.forever], db_dsn, mode, shutdown_grace=0.2)
                wait_until(
                    lambda attempt=attempt: (  # type: ignore[misc]
                        _tasks(conn, run_id)[0]["status"] == "started"
                        and _tasks(conn, run_id)[0]["attempts_count"] == attempt
                    ),
                    f"attempt {attempt} running",
                )
                worker.stop()
            (last,) = _tasks(conn, run_id)
            assert (last["status"], last["attempts_count"]) == ("failed", 2)
            assert last["error_message"].startswith("WorkerStopped: ")
            assert client.get(run_id).status == "failed"
    finally:
        gate.touch()
