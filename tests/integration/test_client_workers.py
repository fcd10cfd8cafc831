"""Workers as clients see them (`pgflow.db.workers`): live, stopped or presumed dead after three
missed heartbeats; `Client.serving_workers`, `Client.workers`, and the warning `Client.wait`
logs once when no live worker serves the run's flow. Worker rows are made with the contract's
own functions; a dead worker's staleness is made by backdating its heartbeat, not by waiting."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import psycopg
import pytest

from pgflow import AsyncClient, Client, PgflowError, WaitTimeout
from pgflow.db.workers import PRESUMED_DEAD_AFTER

Conn = psycopg.Connection[Any]
FLOW = "cw_flow"


@pytest.fixture
def flow(conn: Conn) -> str:
    conn.execute("select pgflow.create_flow(%s)", (FLOW,))
    conn.execute("select pgflow.add_step(%s, 'only')", (FLOW,))
    return FLOW


def register(conn: Conn, flow_slug: str = FLOW, where: str = "host:1") -> str:
    worker_id = str(uuid.uuid4())
    conn.execute("select pgflow.register_worker(%s, %s, %s)", (worker_id, flow_slug, where))
    return worker_id


def start(conn: Conn) -> str:
    row = conn.execute("select run_id::text from pgflow.start_flow(%s, '{}')", (FLOW,)).fetchone()
    assert row is not None
    return str(row[0])


def backdate(conn: Conn, worker_id: str, seconds: float) -> None:
    conn.execute(
        "update pgflow.workers set last_heartbeat_at = now() - make_interval(secs => %s), "
        "started_at = started_at - make_interval(secs => %s) where worker_id = %s",
        (seconds, seconds, worker_id),
    )


def test_which_workers_serve_a_flow(flow: str, conn: Conn, db_dsn: str) -> None:
    with Client(db_dsn) as client:
        assert client.serving_workers(flow) == 0
        live = register(conn)
        assert client.serving_workers(flow) == 1
        register(conn, where="host:2")
        assert client.serving_workers(flow) == 2
        # stopped, deprecated, silent for longer than three heartbeats: none of them serves
        stopped = register(conn, where="host:3")
        conn.execute("select pgflow.mark_worker_stopped(%s)", (stopped,))
        conn.execute(
            "update pgflow.workers set deprecated_at = now() where function_name = 'host:2'"
        )
        assert client.serving_workers(flow) == 1
        backdate(conn, live, PRESUMED_DEAD_AFTER + 1)
        assert client.serving_workers(flow) == 0
        # a heartbeat brings it back
        conn.execute("select pgflow.send_heartbeat(%s)", (live,))
        assert client.serving_workers(flow) == 1


def test_workers_lists_each_with_its_state_newest_first(flow: str, conn: Conn, db_dsn: str) -> None:
    conn.execute("select pgflow.create_flow('cw_other')")
    dead = register(conn, where="host:dead")
    backdate(conn, dead, PRESUMED_DEAD_AFTER + 5)
    stopped = register(conn, where="host:stopped")
    backdate(conn, stopped, 2)
    conn.execute("select pgflow.mark_worker_stopped(%s)", (stopped,))
    live = register(conn, "cw_other", where="host:live")
    with Client(db_dsn) as client:
        listed = client.workers()
        assert [(w.worker_id, w.flow_slug, w.state) for w in listed] == [
            (live, "cw_other", "live"),
            (stopped, FLOW, "stopped"),
            (dead, FLOW, "presumed dead"),
        ]
        assert listed[2].heartbeat_age > PRESUMED_DEAD_AFTER
        assert listed[2].function_name == "host:dead"
        assert listed[0].heartbeat_age < PRESUMED_DEAD_AFTER
        assert [w.worker_id for w in client.workers(limit=1)] == [live]
        assert [w.worker_id for w in client.workers(flow=FLOW)] == [stopped, dead]
        with pytest.raises(PgflowError, match="limit must be 1 or more"):
            client.workers(limit=0)


def waiting_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pgflow.client" and r.levelno == logging.WARNING
    ]


def test_wait_warns_once_when_nobody_serves_the_flow(
    flow: str, conn: Conn, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow.client")
    run_id = start(conn)
    with Client(db_dsn) as client, pytest.raises(WaitTimeout):
        client.wait(run_id, timeout=0.5)
    (warning,) = waiting_warnings(caplog)
    assert warning.startswith(f"no live worker serves flow '{FLOW}'")
    assert "`pgflow worker <module>:<flow>`" in warning

    caplog.clear()

    async def main() -> None:
        async with AsyncClient(db_dsn) as client:
            with pytest.raises(WaitTimeout):
                await client.wait(run_id, timeout=0.3)

    asyncio.run(main())
    assert len(waiting_warnings(caplog)) == 1


def test_wait_says_nothing_while_a_live_worker_serves_the_flow(
    flow: str, conn: Conn, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow.client")
    register(conn)
    run_id = start(conn)
    with Client(db_dsn) as client, pytest.raises(WaitTimeout):
        client.wait(run_id, timeout=0.3)
    assert waiting_warnings(caplog) == []
