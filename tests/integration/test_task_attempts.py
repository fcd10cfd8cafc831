"""pgflow.task_attempts in SQL: one row per ended attempt, written by whatever ends it.

Every way an attempt ends is here: a completion and a failure (per task and batched, set-based
or not), a type violation, a handler timeout and a stopped worker (outcomes the report names),
the stall sweep, a cancelled run, a run failed by another task and a step skipped under a
running task. What must add nothing: a late, duplicate or stale result, and a task given back
unstarted. The rows go with their run, and reading them uses the primary key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from contract_helpers import (
    Conn,
    define_flow,
    expect_error,
    jsonb,
    make_visible,
    map_step,
    read_and_start,
    register_worker,
    rows,
    scalar,
    single,
    start_flow,
    task,
)

from pgflow.client import _SQL

TRACEBACK = 'Traceback (most recent call last):\n  File "h.py", line 3, in load\nValueError: no'


def _attempts(conn: Conn, run_id: uuid.UUID) -> list[dict[str, Any]]:
    return rows(
        conn,
        "select step_slug, task_index, attempt, flow_slug, worker_id, started_at, ended_at,"
        " outcome, error_message, traceback from pgflow.task_attempts where run_id = %s"
        " order by step_slug, task_index, attempt",
        (run_id,),
    )


def _summary(conn: Conn, run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return [
        (a["step_slug"], a["task_index"], a["attempt"], a["outcome"], a["error_message"])
        for a in _attempts(conn, run_id)
    ]


def _fail(conn: Conn, run_id: uuid.UUID, step: str, index: int, error: str, **kw: Any) -> int:
    found = rows(
        conn,
        "select 1 from pgflow.fail_task(%s, %s, %s, %s, %s::int, %s::text, %s::text, %s::text)",
        (
            run_id,
            step,
            index,
            error,
            kw.get("attempt"),
            kw.get("retry"),
            kw.get("traceback"),
            kw.get("outcome"),
        ),
    )
    return len(found)


def _complete(
    conn: Conn, run_id: uuid.UUID, step: str, index: int, output: Any, attempt: int | None = None
) -> int:
    found = rows(
        conn,
        "select 1 from pgflow.complete_task(%s, %s, %s, %s, %s::int)",
        (run_id, step, index, jsonb(output), attempt),
    )
    return len(found)


def _report(conn: Conn, items: list[dict[str, Any]]) -> int:
    def column(name: str) -> list[Any] | None:
        values = [item.get(name) for item in items]
        return values if any(v is not None for v in values) else None

    return int(
        scalar(
            conn,
            "select pgflow.report_tasks(%s::uuid[], %s::text[], %s::int[], %s::jsonb, %s::text[],"
            " %s::int[], %s::text[], %s::text[], %s::text[])",
            (
                [item["run_id"] for item in items],
                [item["step_slug"] for item in items],
                [item["task_index"] for item in items],
                jsonb([item.get("output") for item in items]),
                column("error"),
                column("attempt"),
                column("retry"),
                column("traceback"),
                column("outcome"),
            ),
        )
    )


# -- per task ------------------------------------------------------------------------------------


def test_two_failures_then_a_completion_are_three_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_retry", [single("a")], max_attempts=3, base_delay=0)
    worker = register_worker(conn, "ta_retry")
    run_id = start_flow(conn, "ta_retry", {})["run_id"]
    started = []
    for attempt in (1, 2):
        (record,) = read_and_start(conn, "ta_retry", worker)
        started.append(task(conn, run_id, "a")["started_at"])
        assert _fail(conn, run_id, "a", 0, f"ValueError: no {attempt}", traceback=TRACEBACK) == 1
        make_visible(conn, "ta_retry", [record["msg_id"]])
    read_and_start(conn, "ta_retry", worker)
    started.append(task(conn, run_id, "a")["started_at"])
    assert _complete(conn, run_id, "a", 0, {"ok": True}) == 1

    attempts = _attempts(conn, run_id)
    assert [(a["attempt"], a["outcome"], a["error_message"]) for a in attempts] == [
        (1, "failed", "ValueError: no 1"),
        (2, "failed", "ValueError: no 2"),
        (3, "completed", None),
    ]
    assert [a["traceback"] for a in attempts] == [TRACEBACK, TRACEBACK, None]
    assert [a["started_at"] for a in attempts] == started
    assert all(a["worker_id"] == worker and a["flow_slug"] == "ta_retry" for a in attempts)
    assert all(a["ended_at"] >= a["started_at"] for a in attempts)
    assert attempts[0]["ended_at"] <= attempts[1]["started_at"]


def test_the_contract_forms_record_attempts_too(conn: Conn) -> None:
    define_flow(conn, "ta_contract", [single("a"), single("b", "a")], max_attempts=1)
    worker = register_worker(conn, "ta_contract")
    run_id = start_flow(conn, "ta_contract", {})["run_id"]
    read_and_start(conn, "ta_contract", worker)
    conn.execute("select pgflow.complete_task(%s, 'a', 0, '1'::jsonb)", (run_id,))
    read_and_start(conn, "ta_contract", worker)
    conn.execute("select pgflow.fail_task(%s, 'b', 0, 'Boom: b')", (run_id,))
    assert _summary(conn, run_id) == [
        ("a", 0, 1, "completed", None),
        ("b", 0, 1, "failed", "Boom: b"),
    ]


def test_an_output_of_the_wrong_type_fails_its_attempt(conn: Conn) -> None:
    define_flow(conn, "ta_type", [single("a"), map_step("m", "a")])
    worker = register_worker(conn, "ta_type")
    run_id = start_flow(conn, "ta_type", {})["run_id"]
    read_and_start(conn, "ta_type", worker)
    assert _complete(conn, run_id, "a", 0, {"not": "an array"}) == 1
    ((step, index, attempt, outcome, error),) = _summary(conn, run_id)
    assert (step, index, attempt, outcome) == ("a", 0, 1, "failed")
    assert error.startswith("[TYPE_VIOLATION]")


def test_the_report_names_how_a_failed_attempt_ended(conn: Conn) -> None:
    define_flow(conn, "ta_outcome", [single("a")], max_attempts=3, base_delay=0)
    worker = register_worker(conn, "ta_outcome")
    run_id = start_flow(conn, "ta_outcome", {})["run_id"]
    for outcome in ("timed_out", "worker_stopped"):
        (record,) = read_and_start(conn, "ta_outcome", worker)
        assert _fail(conn, run_id, "a", 0, f"Err: {outcome}", outcome=outcome, retry="now") == 1
        make_visible(conn, "ta_outcome", [record["msg_id"]])
    assert [a[3] for a in _summary(conn, run_id)] == ["timed_out", "worker_stopped"]
    read_and_start(conn, "ta_outcome", worker)
    expect_error(
        conn,
        "select pgflow.fail_task(%s, 'a', 0, 'x', null::int, null::text, null::text, 'stalled')",
        (run_id,),
        "outcome must be",
        "'stalled'",
    )


# -- batched --------------------------------------------------------------------------------------


def test_a_batch_records_every_result_that_takes_effect(conn: Conn) -> None:
    define_flow(conn, "ta_batch", [map_step("m")], max_attempts=2, base_delay=0)
    worker = register_worker(conn, "ta_batch")
    run_id = start_flow(conn, "ta_batch", [0, 1, 2, 3])["run_id"]
    claimed = read_and_start(conn, "ta_batch", worker)
    assert len(claimed) == 4

    def item(index: int, **kw: Any) -> dict[str, Any]:
        return {"run_id": run_id, "step_slug": "m", "task_index": index, "attempt": 1, **kw}

    # completions counted down set by set, a failure with its traceback, a timeout, and a
    # duplicate of the first completion that must add nothing
    applied = _report(
        conn,
        [
            item(0, output=0),
            item(1, output=1),
            item(0, output=99),
            item(2, error="ValueError: no", traceback=TRACEBACK),
            item(3, error="TimeoutError: slow", outcome="timed_out"),
        ],
    )
    assert applied == 4
    assert _summary(conn, run_id) == [
        ("m", 0, 1, "completed", None),
        ("m", 1, 1, "completed", None),
        ("m", 2, 1, "failed", "ValueError: no"),
        ("m", 3, 1, "timed_out", "TimeoutError: slow"),
    ]
    by_index = {a["task_index"]: a for a in _attempts(conn, run_id)}
    assert by_index[2]["traceback"] == TRACEBACK
    assert by_index[0]["worker_id"] == worker
    assert by_index[0]["started_at"] == task(conn, run_id, "m", 0)["started_at"]

    # the retries, through report_and_claim; then the same report again adds nothing
    make_visible(conn, "ta_batch", [c["msg_id"] for c in claimed])
    assert len(read_and_start(conn, "ta_batch", worker)) == 2
    report_and_claim = (
        "select * from pgflow.report_and_claim('ta_batch', %s, 0, %s::uuid[], %s::text[],"
        " %s::int[], %s::jsonb, null, %s::int[], tracebacks => null, outcomes => null)"
    )
    params = (worker, [run_id] * 2, ["m", "m"], [2, 3], jsonb([2, 3]), [2, 2])
    conn.execute(report_and_claim, params)
    conn.execute(report_and_claim, params)
    assert [a[2:4] for a in _summary(conn, run_id)] == [
        (1, "completed"),
        (1, "completed"),
        (1, "failed"),
        (2, "completed"),
        (1, "timed_out"),
        (2, "completed"),
    ]
    assert scalar(conn, "select status from pgflow.runs where run_id = %s", (run_id,)) == (
        "completed"
    )


def test_arrays_of_the_wrong_length_are_refused(conn: Conn) -> None:
    expect_error(
        conn,
        "select pgflow.report_tasks(array[gen_random_uuid()], array['a'], array[0], '[1]',"
        " tracebacks => array['x', 'y'])",
        None,
        "tracebacks",
        "one element per item",
    )


# -- results that must add nothing -----------------------------------------------------------


def test_late_duplicate_and_stale_results_add_no_attempt(conn: Conn) -> None:
    define_flow(conn, "ta_late", [single("a")], max_attempts=3, base_delay=0)
    worker = register_worker(conn, "ta_late")
    run_id = start_flow(conn, "ta_late", {})["run_id"]
    (record,) = read_and_start(conn, "ta_late", worker)
    assert _fail(conn, run_id, "a", 0, "E: first", attempt=1) == 1
    make_visible(conn, "ta_late", [record["msg_id"]])
    read_and_start(conn, "ta_late", worker)
    # attempt 1's worker reports again, then a stale completion of attempt 1
    assert _fail(conn, run_id, "a", 0, "E: again", attempt=1) == 0
    assert _complete(conn, run_id, "a", 0, "stale", attempt=1) == 0
    assert _complete(conn, run_id, "a", 0, "done", attempt=2) == 1
    # late and duplicate, per task and batched
    assert _complete(conn, run_id, "a", 0, "done", attempt=2) == 0
    assert _complete(conn, run_id, "a", 0, "late") == 0
    assert _fail(conn, run_id, "a", 0, "E: late") == 0
    item = {"run_id": run_id, "step_slug": "a", "task_index": 0}
    assert _report(conn, [item, item]) == 0
    assert _summary(conn, run_id) == [
        ("a", 0, 1, "failed", "E: first"),
        ("a", 0, 2, "completed", None),
    ]


def test_a_task_given_back_unstarted_has_no_attempt(conn: Conn) -> None:
    define_flow(conn, "ta_release", [single("a")])
    worker = register_worker(conn, "ta_release")
    run_id = start_flow(conn, "ta_release", {})["run_id"]
    read_and_start(conn, "ta_release", worker)
    released = scalar(
        conn,
        "select pgflow.release_tasks('ta_release', %s, array[%s]::uuid[], array['a'],"
        " array[0], array[1])",
        (worker, run_id),
    )
    assert released == 1
    assert _attempts(conn, run_id) == []
    # claimed again, it is attempt 1 once more, and recorded once it ends
    read_and_start(conn, "ta_release", worker)
    assert _complete(conn, run_id, "a", 0, 1, attempt=1) == 1
    assert [a[2:4] for a in _summary(conn, run_id)] == [(1, "completed")]


# -- attempts that end without a result -----------------------------------------------------------


def _stall(conn: Conn, run_id: uuid.UUID) -> None:
    conn.execute(
        "update pgflow.step_tasks set started_at = now() - interval '100 seconds',"
        " queued_at = least(queued_at, now() - interval '101 seconds') where run_id = %s"
        " and status = 'started'",
        (run_id,),
    )


def test_the_stall_sweep_ends_attempts_as_stalled(conn: Conn) -> None:
    define_flow(conn, "ta_stall", [single("a", timeout=10)])
    worker = register_worker(conn, "ta_stall")
    run_id = start_flow(conn, "ta_stall", {})["run_id"]
    for _ in range(4):  # three requeues, then the sweep gives up on the task
        read_and_start(conn, "ta_stall", worker)
        _stall(conn, run_id)
        conn.execute("select pgflow.requeue_stalled_tasks()")
    attempts = _attempts(conn, run_id)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (1, "stalled"),
        (2, "stalled"),
        (3, "stalled"),
        (4, "stalled"),
    ]
    assert all("timeout of 10 s" in a["error_message"] for a in attempts)
    assert all(a["worker_id"] == worker for a in attempts)
    assert task(conn, run_id, "a")["status"] == "failed"


def test_a_cancelled_run_ends_its_running_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_cancel", [map_step("m")])
    worker = register_worker(conn, "ta_cancel")
    run_id = start_flow(conn, "ta_cancel", [1, 2, 3])["run_id"]
    claimed = read_and_start(conn, "ta_cancel", worker)
    # task 0 completes, task 1 goes back unstarted, task 2 is running when the run is cancelled
    assert _complete(conn, run_id, "m", 0, 1) == 1
    conn.execute(
        "select pgflow.release_tasks('ta_cancel', %s, array[%s]::uuid[], array['m'], array[1],"
        " array[1])",
        (worker, run_id),
    )
    assert len(claimed) == 3
    conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    assert _summary(conn, run_id) == [
        ("m", 0, 1, "completed", None),
        ("m", 2, 1, "cancelled", "the run was cancelled"),
    ]
    # its worker's result, arriving now, changes nothing
    assert _complete(conn, run_id, "m", 2, 3, attempt=1) == 0
    assert len(_attempts(conn, run_id)) == 2


def test_a_run_failed_by_one_task_ends_the_others_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_runfail", [map_step("m")], max_attempts=1)
    worker = register_worker(conn, "ta_runfail")
    run_id = start_flow(conn, "ta_runfail", [1, 2])["run_id"]
    read_and_start(conn, "ta_runfail", worker)
    assert _fail(conn, run_id, "m", 0, "ValueError: bad item", traceback=TRACEBACK) == 1
    assert _summary(conn, run_id) == [
        ("m", 0, 1, "failed", "ValueError: bad item"),
        ("m", 1, 1, "cancelled", "the run failed: ValueError: bad item"),
    ]


def test_a_skipped_step_ends_its_running_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_skip", [map_step("m", when_exhausted="skip")], max_attempts=1)
    worker = register_worker(conn, "ta_skip")
    run_id = start_flow(conn, "ta_skip", [1, 2])["run_id"]
    read_and_start(conn, "ta_skip", worker)
    assert _fail(conn, run_id, "m", 1, "ValueError: skip me") == 1
    assert _summary(conn, run_id) == [
        ("m", 0, 1, "cancelled", "the step was skipped (handler_failed)"),
        ("m", 1, 1, "failed", "ValueError: skip me"),
    ]


# -- they go with their run ---------------------------------------------------------------------


def _finished_run(conn: Conn, flow: str) -> uuid.UUID:
    worker = register_worker(conn, flow)
    run_id: uuid.UUID = start_flow(conn, flow, {})["run_id"]
    read_and_start(conn, flow, worker)
    assert _complete(conn, run_id, "a", 0, 1) == 1
    return run_id


def test_pruning_a_run_deletes_its_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_prune", [single("a")])
    old, recent = _finished_run(conn, "ta_prune"), _finished_run(conn, "ta_prune")
    conn.execute(
        "update pgflow.runs set started_at = started_at - interval '2 days',"
        " completed_at = completed_at - interval '2 days' where run_id = %s",
        (old,),
    )
    summary = scalar(conn, "select pgflow.prune_data_older_than(interval '1 day')")
    assert summary["task_attempts"] == 1
    assert _attempts(conn, old) == []
    assert len(_attempts(conn, recent)) == 1


def test_deleting_a_flow_deletes_its_attempts(conn: Conn) -> None:
    define_flow(conn, "ta_gone", [single("a")])
    define_flow(conn, "ta_kept", [single("a")])
    gone, kept = _finished_run(conn, "ta_gone"), _finished_run(conn, "ta_kept")
    conn.execute("select pgflow.delete_flow_and_data('ta_gone')")
    assert _attempts(conn, gone) == []
    assert len(_attempts(conn, kept)) == 1


# -- rights --------------------------------------------------------------------------------------


def test_roles_read_attempts_and_write_them_only_through_the_functions(conn: Conn) -> None:
    for role in ("pgflow_worker", "pgflow_client"):
        granted = scalar(
            conn,
            "select array[has_table_privilege(%s, 'pgflow.task_attempts', 'select'),"
            " has_table_privilege(%s, 'pgflow.task_attempts', 'insert'),"
            " has_table_privilege(%s, 'pgflow.task_attempts', 'update'),"
            " has_table_privilege(%s, 'pgflow.task_attempts', 'delete')]",
            (role, role, role, role),
        )
        assert granted == [True, False, False, False], role
    assert not scalar(
        conn, "select has_table_privilege('public', 'pgflow.task_attempts', 'select')"
    )
    define_flow(conn, "ta_roles", [single("a")])
    run_id = _finished_run(conn, "ta_roles")
    conn.execute("set role pgflow_worker")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from pgflow.task_attempts where run_id = %s", (run_id,))
    finally:
        conn.execute("reset role")


# -- reads use the primary key ------------------------------------------------------------------


def test_reads_and_deletes_of_attempts_use_the_primary_key(conn: Conn) -> None:
    define_flow(conn, "ta_plans", [single("a")])
    conn.execute(
        "insert into pgflow.runs (run_id, flow_slug, status, input, remaining_steps)"
        " select gen_random_uuid(), 'ta_plans', 'completed', '{}', 0"
        " from generate_series(1, 2000)"
    )
    conn.execute(
        "insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt, flow_slug,"
        " ended_at, outcome) select r.run_id, 'a', i, 1, 'ta_plans', now(), 'completed'"
        " from pgflow.runs r, generate_series(0, 4) i"
    )
    conn.execute("analyze pgflow.runs")
    conn.execute("analyze pgflow.task_attempts")
    run_id = str(scalar(conn, "select run_id from pgflow.runs limit 1"))
    statements = [
        _SQL.attempts(run_id, None, None, True),
        _SQL.attempts(run_id, "a", 2, False),
        ("delete from pgflow.task_attempts a where a.run_id = any (%s::uuid[])", [[run_id]]),
        (
            "delete from pgflow.task_attempts a where a.run_id in"
            " (select r.run_id from pgflow.runs r where r.flow_slug = %s)",
            ["ta_other"],
        ),
    ]
    for query, params in statements:
        plan = scalar(conn, "explain (format json) " + query, params)
        nodes = list(_nodes(plan[0]["Plan"]))
        on_attempts = [n for n in nodes if n.get("Relation Name") == "task_attempts"]
        assert on_attempts, (query, nodes)
        assert all(n["Node Type"] != "Seq Scan" for n in on_attempts), (query, nodes)
        assert any(n.get("Index Name") == "task_attempts_pkey" for n in nodes), (query, nodes)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)
