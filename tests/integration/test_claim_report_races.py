"""Claims and reports racing each other: stale attempts, concurrent claims and reports held at a
barrier, lock ordering between batches of many runs, and the order of map outputs."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from contract_helpers import Conn, define_flow, map_step, one, rows, scalar, single
from psycopg.types.json import Jsonb
from worker_helpers import wait_until

CLAIM_SQL = "select * from pgflow.claim_tasks(%s, %s, %s) where kind = 'task' order by msg_id"
REPORT_SQL = "select pgflow.report_tasks(%s::uuid[], %s::text[], %s::int[], %s::jsonb, %s::text[], %s::int[])"


def _register(conn: Conn, flow: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    conn.execute("select pgflow.register_worker(%s, %s, 'race')", (worker_id, flow))
    return worker_id


def _claim(conn: Conn, flow: str, worker_id: uuid.UUID, qty: int = 1000) -> list[dict[str, Any]]:
    return rows(conn, CLAIM_SQL, (flow, worker_id, qty))


def _report(
    conn: Conn,
    items: list[dict[str, Any]],
    outputs: list[Any],
    errors: list[str | None] | None = None,
    attempts: list[int | None] | None = None,
) -> int:
    return int(
        scalar(
            conn,
            REPORT_SQL,
            (
                [i["run_id"] for i in items],
                [i["step_slug"] for i in items],
                [i["task_index"] for i in items],
                Jsonb(outputs),
                errors,
                attempts,
            ),
        )
    )


def _stall_and_requeue(conn: Conn, run_id: Any, step: str, index: int = 0) -> None:
    """Make a started task look abandoned and let the stalled-task sweep requeue it."""
    conn.execute(
        "update pgflow.step_tasks set started_at = now() - interval '1 hour',"
        " queued_at = now() - interval '2 hours'"
        " where run_id = %s and step_slug = %s and task_index = %s",
        (run_id, step, index),
    )
    assert scalar(conn, "select pgflow.requeue_stalled_tasks()") == 1


def _task(conn: Conn, run_id: Any, step: str, index: int = 0) -> dict[str, Any]:
    return one(
        conn,
        "select status, attempts_count, output, error_message, message_id from pgflow.step_tasks"
        " where run_id = %s and step_slug = %s and task_index = %s",
        (run_id, step, index),
    )


def _archived(conn: Conn, flow: str, msg_id: int) -> bool:
    return bool(
        scalar(conn, f"select exists (select 1 from pgmq.a_{flow} where msg_id = %s)", (msg_id,))
    )


# -- a late result of an earlier attempt ---------------------------------------------------------

STALE_REPORTERS: dict[str, Callable[[Conn, dict[str, Any], int, bool], None]] = {
    "complete_task": lambda c, t, attempt, ok: (
        c.execute(
            "select pgflow.complete_task(%s, %s, %s, %s, %s)",
            (t["run_id"], t["step_slug"], t["task_index"], Jsonb("from A"), attempt),
        )
        if ok
        else c.execute(
            "select pgflow.fail_task(%s, %s, %s, %s, %s)",
            (t["run_id"], t["step_slug"], t["task_index"], "A failed late", attempt),
        )
    ),
    "report_tasks one item": lambda c, t, attempt, ok: c.execute(
        REPORT_SQL,
        (
            [t["run_id"]],
            [t["step_slug"]],
            [t["task_index"]],
            Jsonb(["from A"]),
            [None if ok else "A failed late"],
            [attempt],
        ),
    ),
}


@pytest.mark.parametrize("via", sorted(STALE_REPORTERS))
@pytest.mark.parametrize("ok", [True, False], ids=["completion", "failure"])
def test_a_late_result_of_an_earlier_attempt_changes_nothing(
    conn: Conn, via: str, ok: bool
) -> None:
    define_flow(conn, "stale_flow", [single("only")], max_attempts=5, timeout=5)
    run_id = scalar(conn, "select run_id from pgflow.start_flow('stale_flow', '{}')")
    worker_a, worker_b = _register(conn, "stale_flow"), _register(conn, "stale_flow")
    (claim_a,) = _claim(conn, "stale_flow", worker_a)
    assert claim_a["attempt"] == 1
    _stall_and_requeue(conn, run_id, "only")  # A stalls; the task goes back to the queue
    (claim_b,) = _claim(conn, "stale_flow", worker_b)
    assert claim_b["attempt"] == 2

    STALE_REPORTERS[via](conn, claim_a, 1, ok)  # A wakes up and reports attempt 1
    task = _task(conn, run_id, "only")
    assert (task["status"], task["attempts_count"], task["output"]) == ("started", 2, None)
    assert task["error_message"] is None
    assert not _archived(conn, "stale_flow", task["message_id"])

    STALE_REPORTERS[via](conn, claim_b, 2, True)  # B's real result is applied
    assert _task(conn, run_id, "only")["status"] == "completed"
    assert scalar(conn, "select status from pgflow.runs where run_id = %s", (run_id,)) == (
        "completed"
    )


def test_stale_items_in_a_batch_are_ignored_and_the_rest_applied(conn: Conn) -> None:
    define_flow(conn, "stale_map", [map_step("fan")], max_attempts=5, timeout=5)
    run_id = scalar(conn, "select run_id from pgflow.start_flow('stale_map', '[1, 2, 3]')")
    worker_a, worker_b = _register(conn, "stale_map"), _register(conn, "stale_map")
    claims_a = _claim(conn, "stale_map", worker_a)
    assert [c["attempt"] for c in claims_a] == [1, 1, 1]
    _stall_and_requeue(conn, run_id, "fan", 1)
    (claim_b,) = _claim(conn, "stale_map", worker_b)
    assert (claim_b["task_index"], claim_b["attempt"]) == (1, 2)

    # A reports all three, attempt 1: tasks 0 and 2 apply, task 1 belongs to B's attempt now
    assert _report(conn, claims_a, ["a0", "a1", "a2"], None, [1, 1, 1]) == 2
    assert _task(conn, run_id, "fan", 1)["status"] == "started"
    assert _report(conn, [claim_b, claim_b], ["b1", "dup"], None, [2, 2]) == 1
    output = scalar(conn, "select output from pgflow.runs where run_id = %s", (run_id,))
    assert output == {"fan": ["a0", "b1", "a2"]}


# -- claims and reports held at a barrier ---------------------------------------------------------


def test_concurrent_claims_skip_locked_messages_instead_of_waiting(conn: Conn, db_dsn: str) -> None:
    define_flow(conn, "race_claims", [map_step("fan")])
    conn.execute("select pgflow.start_flow('race_claims', %s)", (Jsonb(list(range(20))),))
    worker_a, worker_b = _register(conn, "race_claims"), _register(conn, "race_claims")
    with psycopg.connect(db_dsn) as a, psycopg.connect(db_dsn) as b:
        # A claims half and keeps its transaction (and its row locks) open
        first = _claim(a, "race_claims", worker_a, 10)
        assert len(first) == 10
        # B must not wait for A: it skips A's locked messages and claims the others
        b.execute("set lock_timeout = '5s'")
        second = _claim(b, "race_claims", worker_b, 20)
        b.commit()
        a.commit()
    ids_a = {(c["task_index"]) for c in first}
    ids_b = {(c["task_index"]) for c in second}
    assert ids_a.isdisjoint(ids_b)
    assert ids_a | ids_b == set(range(20))
    started = rows(
        conn,
        "select last_worker_id, count(*) as n from pgflow.step_tasks where status = 'started'"
        " group by last_worker_id",
    )
    assert {r["last_worker_id"]: r["n"] for r in started} == {worker_a: 10, worker_b: 10}


def _backend_waits_on_a_lock(conn: Conn, pid: int) -> bool:
    return bool(
        scalar(
            conn,
            "select coalesce(wait_event_type = 'Lock', false) from pg_stat_activity where pid = %s",
            (pid,),
        )
    )


class _Background:
    """Runs one statement on its own connection in a thread; keeps its result or error."""

    def __init__(self, dsn: str, action: Callable[[Conn], Any]) -> None:
        self.conn: Conn = psycopg.connect(dsn, autocommit=True)
        self.pid = self.conn.info.backend_pid
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(action,), daemon=True)
        self.thread.start()

    def _run(self, action: Callable[[Conn], Any]) -> None:
        try:
            self.result = action(self.conn)
        except BaseException as exc:
            self.error = exc

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the background statement did not finish"
        self.conn.close()
        if self.error is not None:
            raise self.error
        return self.result


def test_two_reports_of_the_same_task_apply_once(conn: Conn, db_dsn: str) -> None:
    define_flow(conn, "race_dup", [map_step("fan")])
    run_id = scalar(conn, "select run_id from pgflow.start_flow('race_dup', '[1, 2, 3]')")
    worker_id = _register(conn, "race_dup")
    claims = _claim(conn, "race_dup", worker_id)
    item = [claims[0], claims[1]]
    with psycopg.connect(db_dsn) as a:
        assert _report(a, item, ["x", "y"], None, [1, 1]) == 2  # in A's open transaction
        b = _Background(db_dsn, lambda c: _report(c, item, ["x2", "y2"], None, [1, 1]))
        wait_until(lambda: _backend_waits_on_a_lock(conn, b.pid), "B to wait for A's locks")
        a.commit()
    assert b.join() == 0
    state = one(
        conn,
        "select remaining_tasks from pgflow.step_states where run_id = %s and step_slug = 'fan'",
        (run_id,),
    )
    assert state["remaining_tasks"] == 1
    assert [_task(conn, run_id, "fan", i)["output"] for i in (0, 1)] == ["x", "y"]


def test_reports_of_several_runs_lock_runs_in_one_order(conn: Conn, db_dsn: str) -> None:
    """A holds the lowest run. B reports tasks of ten higher runs and then one of the lowest:
    B must wait for the lowest run before it locks anything of the others, or A's next report
    (of those same tasks) deadlocks with B."""
    define_flow(conn, "race_order", [map_step("fan")])
    run_ids = sorted(
        scalar(conn, "select run_id from pgflow.start_flow('race_order', '[1, 2]')")
        for _ in range(11)
    )
    low, higher = run_ids[0], run_ids[1:]
    worker_id = _register(conn, "race_order")
    claims = {(c["run_id"], c["task_index"]): c for c in _claim(conn, "race_order", worker_id)}
    firsts = [claims[(str(r), 0)] for r in higher]
    seconds = [claims[(str(r), 1)] for r in higher]
    with psycopg.connect(db_dsn) as a:
        a.execute("set deadlock_timeout = '100ms'")
        _report(a, [claims[(str(low), 0)]], ["a"], None, [1])
        b_items = [*firsts, claims[(str(low), 0)]]
        b = _Background(
            db_dsn, lambda c: _report(c, b_items, ["b"] * len(b_items), None, [1] * len(b_items))
        )
        wait_until(lambda: _backend_waits_on_a_lock(conn, b.pid), "B to wait for A's locks")
        a_items = [*firsts, *seconds, claims[(str(low), 1)]]
        assert _report(a, a_items, ["a"] * len(a_items), None, [1] * len(a_items)) == 21
        a.commit()
    assert b.join() == 0  # everything B reported was done by then
    statuses = rows(conn, "select distinct status from pgflow.runs")
    assert statuses == [{"status": "completed"}]


def test_many_concurrent_reports_of_many_runs_never_deadlock(conn: Conn, db_dsn: str) -> None:
    define_flow(conn, "race_many", [map_step("fan"), single("sum", "fan")])
    runs = [
        scalar(conn, "select run_id from pgflow.start_flow('race_many', '[1, 2, 3, 4, 5, 6]')")
        for _ in range(40)
    ]
    worker_id = _register(conn, "race_many")
    claims = _claim(conn, "race_many", worker_id)
    assert len(claims) == 240
    rng = random.Random(7)
    rng.shuffle(claims)
    # 4 reporters, each with batches that span many runs in random order
    shares = [claims[i::4] for i in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def report_share(share: list[dict[str, Any]]) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                c.execute("set deadlock_timeout = '50ms'")
                barrier.wait(10)
                for start in range(0, len(share), 15):
                    batch = share[start : start + 15]
                    _report(c, batch, [b["task_index"] for b in batch], None, [1] * len(batch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=report_share, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    started = scalar(
        conn,
        "select count(*) from pgflow.step_states where step_slug = 'sum' and status = 'started'",
    )
    assert started == len(runs)
    outputs = {
        tuple(r["output"])
        for r in rows(conn, "select output from pgflow.step_states where step_slug = 'fan'")
    }
    assert outputs == {(0, 1, 2, 3, 4, 5)}


# -- map outputs keep task order ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["report_tasks", "complete_task"])
def test_map_output_is_in_task_order_whatever_the_completion_order(
    conn: Conn, db_dsn: str, path: str
) -> None:
    """A few thousand tasks completed in scrambled order, with index scans off so the output
    aggregation cannot lean on an index to come out sorted."""
    size = 3000 if path == "report_tasks" else 600
    define_flow(conn, "order_map", [map_step("fan")])
    run_id = scalar(
        conn, "select run_id from pgflow.start_flow('order_map', %s)", (Jsonb(list(range(size))),)
    )
    worker_id = _register(conn, "order_map")
    claims = _claim(conn, "order_map", worker_id, size)
    assert len(claims) == size
    random.Random(3).shuffle(claims)
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("set enable_indexscan = off")
        c.execute("set enable_bitmapscan = off")
        c.execute("set enable_indexonlyscan = off")
        if path == "report_tasks":
            for start in range(0, size, 250):
                batch = claims[start : start + 250]
                outputs = [f"out-{b['task_index']}" for b in batch]
                _report(c, batch, outputs, None, [1] * len(batch))
        else:
            for claim in claims:
                c.execute(
                    "select pgflow.complete_task(%s, 'fan', %s, %s)",
                    (run_id, claim["task_index"], Jsonb(f"out-{claim['task_index']}")),
                )
    output = scalar(conn, "select output from pgflow.runs where run_id = %s", (run_id,))
    assert output == {"fan": [f"out-{i}" for i in range(size)]}
