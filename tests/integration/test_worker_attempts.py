"""A real worker records every attempt: its outcome, error, worker and the handler's traceback
(naming the function that raised, with passwords masked), on every executor and both paths."""

from __future__ import annotations

import asyncio

import attempt_flows as flows
import pytest
from contract_helpers import Conn, rows
from worker_helpers import BATCHED, PER_TASK, Mode, modes, running_worker

from pgflow.client import AsyncClient, Client, TaskAttempt
from pgflow.errors import PgflowError, RunNotFound


@modes(*BATCHED, *(m for m in PER_TASK if m.executor in ("thread", "process")))
def test_two_failed_attempts_then_a_completion(db_dsn: str, conn: Conn, mode: Mode) -> None:
    with running_worker([flows.flaky], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.flaky, {})
        attempts = client.attempts(run.run_id)
    assert run.status == "completed", run

    load = [a for a in attempts if a.step_slug == "load"]
    assert [(a.attempt, a.outcome) for a in load] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    for a in load[:2]:
        assert a.error_message is not None
        assert a.error_message.startswith(f"ConnectionError: attempt {a.attempt}: could not")
        assert a.traceback is not None
        assert "in _connect_to_the_warehouse" in a.traceback
        assert "in load" in a.traceback
        assert "postgresql://loader:***@warehouse:5432/dw" in a.traceback
        assert "postgresql://loader:***@warehouse" in a.error_message
    assert (load[2].error_message, load[2].traceback) == (None, None)

    double = [(a.task_index, a.attempt, a.outcome) for a in attempts if a.step_slug == "double"]
    assert double == [(i, 1, "completed") for i in range(4)]

    worker_ids = {str(w) for w in worker.worker.worker_ids.values()}
    for a in attempts:
        assert a.worker_id in worker_ids
        assert a.flow_slug == flows.flaky.slug
        assert a.started_at is not None and a.duration is not None and a.duration >= 0
    # nothing stored anywhere quotes the password
    stored = rows(
        conn,
        "select count(*) as n from pgflow.task_attempts a join pgflow.step_tasks t using"
        " (run_id, step_slug, task_index) where a.run_id = %s and (a.traceback like %s"
        " or a.error_message like %s or t.error_message like %s)",
        (run.run_id, *[f"%{flows.SECRET}%"] * 3),
    )
    assert stored == [{"n": 0}]


def test_the_async_client_reads_attempts_too(db_dsn: str) -> None:
    with running_worker([flows.flaky], db_dsn, Mode("thread")) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.flaky, {})
        expected = client.attempts(run.run_id, "load", tracebacks=False)

    async def read() -> tuple[list[TaskAttempt], list[TaskAttempt]]:
        async with AsyncClient(db_dsn) as client:
            return (
                await client.attempts(run.run_id, "load", tracebacks=False),
                await client.attempts(run.run_id, "load", 0),
            )

    without, with_tracebacks = asyncio.run(read())
    assert without == expected
    assert [a.traceback for a in expected] == [None, None, None]
    assert [a.attempt for a in with_tracebacks] == [1, 2, 3]
    assert "_connect_to_the_warehouse" in (with_tracebacks[0].traceback or "")


def test_attempts_of_an_unknown_run(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(RunNotFound, match="does not exist"):
        client.attempts("00000000-0000-4000-8000-000000000000")
    with Client(db_dsn) as client, pytest.raises(PgflowError, match="needs its step_slug"):
        client.attempts("00000000-0000-4000-8000-000000000000", task_index=0)
