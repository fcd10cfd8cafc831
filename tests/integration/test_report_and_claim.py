"""pgflow.report_and_claim: a report that hands the tasks it made ready to the reporting worker.

The tasks come back claimed exactly as claim_tasks claims them (attempt counted, message hidden
for the step's timeout, worker recorded), only tasks that this very report queued are taken, and
other workers are woken only for what is left over.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from contract_helpers import (
    Conn,
    define_flow,
    map_step,
    queue_messages,
    rows,
    scalar,
    seconds_until_visible,
    single,
    start_flow,
    step_state,
    task,
)
from psycopg.types.json import Jsonb

CLAIM_SQL = "select * from pgflow.claim_tasks(%s, %s, %s)"
REPORT_AND_CLAIM_SQL = (
    "select * from pgflow.report_and_claim(%s, %s, %s, %s::uuid[], %s::text[], %s::int[],"
    " %s::jsonb, %s::text[], %s::int[])"
)


def _register(conn: Conn, flow: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    conn.execute("select pgflow.register_worker(%s, %s, 'rc-test')", (worker_id, flow))
    return worker_id


def _tasks(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in result if r["kind"] == "task"]


def _claim(conn: Conn, flow: str, worker_id: uuid.UUID, qty: int = 100) -> list[dict[str, Any]]:
    return _tasks(rows(conn, CLAIM_SQL, (flow, worker_id, qty)))


def _report_and_claim(
    conn: Conn,
    flow: str,
    worker_id: uuid.UUID,
    qty: int,
    items: list[dict[str, Any]],
    outputs: list[Any],
    errors: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    return rows(
        conn,
        REPORT_AND_CLAIM_SQL,
        (
            flow,
            worker_id,
            qty,
            [i["run_id"] for i in items],
            [i["step_slug"] for i in items],
            [i["task_index"] for i in items],
            Jsonb(outputs),
            errors,
            [i["attempt"] for i in items],
        ),
    )


def _chain(conn: Conn, flow: str, **options: Any) -> None:
    define_flow(conn, flow, [single("a"), single("b", "a", **options)], timeout=7)


def test_the_tasks_a_report_made_ready_come_back_claimed(conn: Conn) -> None:
    _chain(conn, "rc_chain", timeout=40)
    worker = _register(conn, "rc_chain")
    run = start_flow(conn, "rc_chain", {"n": 1})
    [a] = _claim(conn, "rc_chain", worker)

    result = _report_and_claim(conn, "rc_chain", worker, 5, [a], [{"x": 2}])

    assert step_state(conn, run["run_id"], "a")["status"] == "completed"
    [b] = _tasks(result)
    assert (b["step_slug"], b["task_index"], b["attempt"], b["mode"]) == ("b", 0, 1, 1)
    assert b["deps"] == ["a"]
    blobs = {(r["run_id"], r["step_slug"]): r["payload"] for r in result if r["kind"] == "blob"}
    assert blobs == {(str(run["run_id"]), "a"): '{"x": 2}'}
    # claimed in every respect: started by this worker, first attempt, message hidden for the
    # step's timeout (40 s + 2 s, not the flow's 7 s) and its read counted
    row = task(conn, run["run_id"], "b")
    assert (row["status"], row["attempts_count"], row["last_worker_id"]) == ("started", 1, worker)
    assert row["started_at"] is not None
    assert 35 < seconds_until_visible(conn, "rc_chain", b["msg_id"]) <= 42
    assert queue_messages(conn, "rc_chain")[b["msg_id"]]["read_ct"] == 1
    # nobody else sees it
    other = _register(conn, "rc_chain")
    assert _claim(conn, "rc_chain", other) == []


def test_a_report_without_free_slots_leaves_the_tasks_to_everyone(conn: Conn) -> None:
    _chain(conn, "rc_zero")
    worker = _register(conn, "rc_zero")
    run = start_flow(conn, "rc_zero", {})
    [a] = _claim(conn, "rc_zero", worker)

    assert _report_and_claim(conn, "rc_zero", worker, 0, [a], [1]) == []

    assert task(conn, run["run_id"], "b")["status"] == "queued"
    other = _register(conn, "rc_zero")
    assert [t["step_slug"] for t in _claim(conn, "rc_zero", other)] == ["b"]


def test_an_unregistered_worker_still_reports_but_claims_nothing(conn: Conn) -> None:
    _chain(conn, "rc_unreg")
    worker = _register(conn, "rc_unreg")
    run = start_flow(conn, "rc_unreg", {})
    [a] = _claim(conn, "rc_unreg", worker)

    assert _report_and_claim(conn, "rc_unreg", uuid.uuid4(), 5, [a], [1]) == []

    assert step_state(conn, run["run_id"], "a")["status"] == "completed"
    assert task(conn, run["run_id"], "b")["status"] == "queued"


def test_only_as_many_as_offered_and_the_rest_wake_other_workers(conn: Conn, db_dsn: str) -> None:
    define_flow(conn, "rc_fan", [single("a"), map_step("m", "a")])
    worker = _register(conn, "rc_fan")
    run = start_flow(conn, "rc_fan", {})
    [a] = _claim(conn, "rc_fan", worker)

    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_tasks")
        claimed = _tasks(_report_and_claim(conn, "rc_fan", worker, 2, [a], [[10, 20, 30, 40, 50]]))
        woken = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]

    assert sorted(t["task_index"] for t in claimed) == [0, 1]
    assert all(t["attempt"] == 1 for t in claimed)
    # the three left over are visible to other workers, who were told
    assert woken == ["rc_fan"]
    other = _register(conn, "rc_fan")
    assert sorted(t["task_index"] for t in _claim(conn, "rc_fan", other)) == [2, 3, 4]
    statuses = {
        t["task_index"]: t["status"]
        for t in rows(
            conn,
            "select * from pgflow.step_tasks where run_id = %s and step_slug = 'm'",
            (run["run_id"],),
        )
    }
    assert statuses == dict.fromkeys(range(5), "started")


def test_no_wake_up_when_the_report_took_everything(conn: Conn, db_dsn: str) -> None:
    _chain(conn, "rc_quiet")
    worker = _register(conn, "rc_quiet")
    start_flow(conn, "rc_quiet", {})
    [a] = _claim(conn, "rc_quiet", worker)

    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_tasks")
        [b] = _tasks(_report_and_claim(conn, "rc_quiet", worker, 5, [a], [1]))
        # a marker sent afterwards: when it arrives, anything the report sent has arrived too
        conn.execute("select pg_notify('pgflow_tasks', 'marker')")
        woken = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]

    assert b["step_slug"] == "b"
    assert woken == ["marker"]
    # the setting that defers wake-ups does not outlive the call, even inside a transaction
    with conn.transaction():
        empty = rows(
            conn,
            "select * from pgflow.report_and_claim('rc_quiet', %s, 3, '{}'::uuid[], '{}'::text[],"
            " '{}'::int[], '[]'::jsonb)",
            (worker,),
        )
        assert empty == []
        assert scalar(conn, "select coalesce(current_setting('pgflow.wakeups', true), '')") == ""


def test_tasks_queued_earlier_or_delayed_are_not_taken(conn: Conn) -> None:
    define_flow(
        conn,
        "rc_other",
        [single("a"), single("late", "a", start_delay=30), single("c")],
    )
    worker = _register(conn, "rc_other")
    run = start_flow(conn, "rc_other", {})
    claimed = {t["step_slug"]: t for t in _claim(conn, "rc_other", worker, qty=1)}
    assert list(claimed) == ["a"]  # c (a root step) stays queued, from the start of the run

    result = _report_and_claim(conn, "rc_other", worker, 5, [claimed["a"]], [1])

    # late was started by this report but waits for its start delay; c was queued by another
    # transaction: neither is taken
    assert _tasks(result) == []
    assert task(conn, run["run_id"], "late")["status"] == "queued"
    assert task(conn, run["run_id"], "c")["status"] == "queued"


def test_a_retried_failure_is_not_claimed_by_its_own_report(conn: Conn) -> None:
    define_flow(conn, "rc_retry", [single("a")], max_attempts=3, base_delay=0)
    worker = _register(conn, "rc_retry")
    run = start_flow(conn, "rc_retry", {})
    [a] = _claim(conn, "rc_retry", worker)

    assert _report_and_claim(conn, "rc_retry", worker, 5, [a], [None], ["boom"]) == []

    row = task(conn, run["run_id"], "a")
    assert (row["status"], row["attempts_count"]) == ("queued", 1)


def test_bad_arguments_are_refused(conn: Conn) -> None:
    _chain(conn, "rc_bad")
    worker = _register(conn, "rc_bad")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="qty must be 0 or more"):
        _report_and_claim(conn, "rc_bad", worker, -1, [], [])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="does not exist"):
        _report_and_claim(conn, "rc_nope", worker, 1, [], [])


def test_only_the_worker_role_may_call_it(conn: Conn) -> None:
    signature = (
        "pgflow.report_and_claim(text, uuid, int, uuid[], text[], int[], jsonb, text[], int[], int, "
        "text[], text[], text[])"
    )
    allowed = {
        role: scalar(conn, "select has_function_privilege(%s, %s, 'execute')", (role, signature))
        for role in ("pgflow_worker", "pgflow_client", "public")
    }
    assert allowed == {"pgflow_worker": True, "pgflow_client": False, "public": False}
