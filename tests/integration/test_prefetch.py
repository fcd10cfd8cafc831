"""Prefetch: a worker may hold claimed tasks that wait for a free slot, on every executor.

What must hold: claims stay batched however few slots the executor has; a waiting task is a claim
in every respect (started, attempt counted, message hidden) and runs exactly once; one that
starts late gets its timeout renewed (pgflow.extend_tasks); waiting tasks are given back at once
when the worker stops (pgflow.release_tasks, attempt not counted); and a worker whose handlers
are slow holds no more than its slots can start soon, so a second worker gets the rest.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import worker_flows as flows
from contract_helpers import (
    Conn,
    define_flow,
    map_step,
    queue_messages,
    rows,
    scalar,
    seconds_until_visible,
    start_flow,
    task,
)
from worker_helpers import BATCHED, Mode, modes, running_worker, start_worker, wait_until

from pgflow.client import Client
from pgflow.worker import loop

FLOW = flows.gated_map.slug


def _tasks(conn: Conn, run_id: str) -> list[dict[str, Any]]:
    return rows(
        conn,
        "select task_index, status, attempts_count, last_worker_id, message_id "
        "from pgflow.step_tasks where run_id = %s order by task_index",
        (run_id,),
    )


def _items(gates: list[Path | None]) -> list[dict[str, Any]]:
    return [{"n": n, "gate": str(g) if g else None} for n, g in enumerate(gates)]


@modes(*BATCHED)
def test_claims_stay_batched_with_one_slot(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.gated_map], db_dsn, mode, concurrency=1) as worker:
        with Client(db_dsn) as client:
            run = worker.run_flow(client, flows.gated_map, _items([None] * 150))
        stats = worker.worker.stats
    assert run.status == "completed"
    assert run.output == {"hold": list(range(150))}
    assert stats.completed == 150
    # without prefetch every claim would take one task (one slot)
    assert stats.largest_claim >= 16, stats
    assert stats.claims < 40, stats


@modes(*BATCHED)
def test_a_waiting_task_is_claimed_renewed_when_it_starts_and_run_once(
    db_dsn: str, conn: Conn, mode: Mode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every waiting task counts as late: its start must renew its hide and timeout
    monkeypatch.setattr(loop, "EXTEND_AFTER", 0.0)
    gate = tmp_path / "gate"
    with running_worker([flows.gated_map], db_dsn, mode, concurrency=1) as worker:
        with Client(db_dsn) as client:
            run_id = client.start(flows.gated_map, _items([gate, None, None]))
            # one slot and no pace measured yet: one task runs, one waits, one stays queued (the
            # worker holds both claimed tasks until the executor has a slot: a process child may
            # take a while to start on a busy machine)
            wait_until(
                lambda: (
                    [t["status"] for t in _tasks(conn, run_id)] == ["started", "started", "queued"]
                    and len(worker.worker._queued) == 1
                ),
                "task 0 running and task 1 prefetched",
            )
            waiting = _tasks(conn, run_id)[1]
            assert waiting["attempts_count"] == 1
            assert waiting["last_worker_id"] is not None
            assert seconds_until_visible(conn, FLOW, waiting["message_id"]) > 25  # timeout 30
            assert [t["status"] for t in _tasks(conn, run_id)] == ["started", "started", "queued"]
            gate.touch()
            run = worker.finish(client, run_id)
        stats = worker.worker.stats
    assert run.status == "completed"
    assert run.output == {"hold": [0, 1, 2]}
    assert [(t["status"], t["attempts_count"]) for t in _tasks(conn, run_id)] == [
        ("completed", 1)
    ] * 3
    assert stats.extended >= 1, stats


@modes(*BATCHED)
def test_waiting_tasks_are_given_back_at_once_on_stop(
    db_dsn: str, conn: Conn, mode: Mode, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = start_worker([flows.gated_map], db_dsn, mode, concurrency=1, shutdown_grace=30.0)
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.gated_map, _items([gate, None]))
            wait_until(
                lambda: [t["status"] for t in _tasks(conn, run_id)] == ["started", "started"],
                "task 0 running and task 1 prefetched",
            )
            first.worker.stop()  # task 0 holds the stop until its gate opens
            if mode.executor == "inline":
                # the handler runs on the worker's own thread: the give-back follows its return
                gate.touch()
            wait_until(
                lambda: _tasks(conn, run_id)[1]["status"] == "queued",
                "the waiting task given back",
            )
            given_back = _tasks(conn, run_id)[1]
            assert given_back["attempts_count"] == 0
            assert given_back["last_worker_id"] is None
            assert seconds_until_visible(conn, FLOW, given_back["message_id"]) <= 0
            if mode.executor != "inline":
                assert _tasks(conn, run_id)[0]["status"] == "started"  # given back at once
            gate.touch()
            first.stop()
            assert first.worker.stats.released == 1
            assert first.worker.stats.completed == 1
            with running_worker([flows.gated_map], db_dsn, mode, concurrency=1) as second:
                run = second.finish(client, run_id)
    finally:
        gate.touch()
        if first.thread.is_alive():
            first.stop()
    assert run.status == "completed"
    assert run.output == {"hold": [0, 1]}
    assert [(t["status"], t["attempts_count"]) for t in _tasks(conn, run_id)] == [
        ("completed", 1),
        ("completed", 1),
    ]


@modes(*BATCHED)
def test_a_worker_with_busy_slots_leaves_the_rest_to_an_idle_one(
    db_dsn: str, conn: Conn, mode: Mode, tmp_path: Path
) -> None:
    gates = [tmp_path / f"gate{i}" for i in range(6)]
    try:
        with (
            running_worker([flows.gated_map], db_dsn, mode, concurrency=1, prefetch=64),
            Client(db_dsn) as client,
        ):
            run_id = client.start(flows.gated_map, _items(list(gates)))
            wait_until(
                lambda: sum(t["status"] == "started" for t in _tasks(conn, run_id)) == 2,
                "the first worker's running and prefetched task",
            )
            with running_worker([flows.gated_map], db_dsn, mode, concurrency=1) as second:
                wait_until(
                    lambda: len({t["last_worker_id"] for t in _tasks(conn, run_id)} - {None}) == 2,
                    "the second worker running tasks of the same run",
                )
                # each holds one running and one waiting task: nothing was hoarded
                started = [t for t in _tasks(conn, run_id) if t["status"] == "started"]
                assert len(started) == 4
                for gate in gates:
                    gate.touch()
                run = second.finish(client, run_id)
    finally:
        for gate in gates:
            gate.touch()
    assert run.status == "completed"
    assert run.output == {"hold": list(range(6))}
    assert all(t["attempts_count"] == 1 for t in _tasks(conn, run_id))


# -- the SQL functions -----------------------------------------------------------------------


def _claimed(conn: Conn, flow: str, qty: int) -> tuple[uuid.UUID, uuid.UUID, list[dict[str, Any]]]:
    define_flow(conn, flow, [map_step("m")], timeout=10)
    run = start_flow(conn, flow, [1, 2, 3])
    worker_id = uuid.uuid4()
    conn.execute("select pgflow.register_worker(%s, %s, 'prefetch-test')", (worker_id, flow))
    claimed = [
        r
        for r in rows(conn, "select * from pgflow.claim_tasks(%s, %s, %s)", (flow, worker_id, qty))
        if r["kind"] == "task"
    ]
    return run["run_id"], worker_id, claimed


def _call(
    conn: Conn, function: str, flow: str, worker_id: uuid.UUID, claimed: list[dict[str, Any]]
) -> int:
    return int(
        scalar(
            conn,
            f"select pgflow.{function}(%s, %s, %s::uuid[], %s::text[], %s::int[], %s::int[])",
            (
                flow,
                worker_id,
                [c["run_id"] for c in claimed],
                [c["step_slug"] for c in claimed],
                [c["task_index"] for c in claimed],
                [c["attempt"] for c in claimed],
            ),
        )
    )


def test_extend_tasks_renews_the_start_and_the_hide_of_this_workers_attempt(conn: Conn) -> None:
    run_id, worker_id, claimed = _claimed(conn, "pf_extend", 2)
    before = {c["task_index"]: task(conn, run_id, "m", c["task_index"]) for c in claimed}
    conn.execute(
        "update pgflow.step_tasks set queued_at = queued_at - interval '20 seconds', "
        "started_at = started_at - interval '20 seconds'"
    )
    conn.execute(
        psycopg.sql.SQL("update {} set vt = clock_timestamp() + interval '1 second'").format(
            psycopg.sql.Identifier("pgmq", "q_pf_extend")
        )
    )
    stale = [dict(c, attempt=c["attempt"] + 1) for c in claimed]
    assert _call(conn, "extend_tasks", "pf_extend", worker_id, stale) == 0
    assert _call(conn, "extend_tasks", "pf_extend", uuid.uuid4(), claimed) == 0
    assert _call(conn, "extend_tasks", "pf_extend", worker_id, claimed) == 2
    for c in claimed:
        after = task(conn, run_id, "m", c["task_index"])
        assert after["status"] == "started"
        assert after["attempts_count"] == 1
        assert after["started_at"] >= before[c["task_index"]]["started_at"]
        # hidden for the flow's timeout (10 s) + 2 s from now
        assert 11 < seconds_until_visible(conn, "pf_extend", after["message_id"]) <= 12
    never_claimed = task(conn, run_id, "m", 2)
    assert never_claimed["status"] == "queued"


def test_release_tasks_gives_back_unstarted_claims_without_counting_an_attempt(
    conn: Conn,
) -> None:
    run_id, worker_id, claimed = _claimed(conn, "pf_release", 2)
    assert _call(conn, "release_tasks", "pf_release", uuid.uuid4(), claimed) == 0
    stale = [dict(c, attempt=c["attempt"] + 1) for c in claimed]
    assert _call(conn, "release_tasks", "pf_release", worker_id, stale) == 0
    assert _call(conn, "release_tasks", "pf_release", worker_id, claimed[:1]) == 1
    released = task(conn, run_id, "m", claimed[0]["task_index"])
    assert (released["status"], released["attempts_count"], released["started_at"]) == (
        "queued",
        0,
        None,
    )
    assert released["last_worker_id"] is None
    assert seconds_until_visible(conn, "pf_release", released["message_id"]) <= 0
    kept = task(conn, run_id, "m", claimed[1]["task_index"])
    assert (kept["status"], kept["attempts_count"]) == ("started", 1)
    assert seconds_until_visible(conn, "pf_release", kept["message_id"]) > 5
    # released twice changes nothing; claimed again, it is attempt 1
    assert _call(conn, "release_tasks", "pf_release", worker_id, claimed[:1]) == 0
    other = uuid.uuid4()
    conn.execute("select pgflow.register_worker(%s, 'pf_release', 'prefetch-test')", (other,))
    again = [
        r
        for r in rows(
            conn, "select * from pgflow.claim_tasks(%s, %s, %s)", ("pf_release", other, 10)
        )
        if r["kind"] == "task"
    ]
    assert sorted((r["task_index"], r["attempt"]) for r in again) == [
        (claimed[0]["task_index"], 1),
        (2, 1),
    ]
    assert len(queue_messages(conn, "pf_release")) == 3
