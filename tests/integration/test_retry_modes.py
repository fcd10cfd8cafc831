"""Failures that say how to retry (our addition): fail_task's `retry`, report_tasks' and
report_and_claim's `retry_modes`.

'now' queues a failed task again at once (a worker that stopped before its task finished),
still counting the attempt; 'never' fails it at once whatever attempts are left and applies the
step's when_exhausted (a handler that raised pgflow.Fail); anything else is refused.
"""

from __future__ import annotations

import uuid

import pytest
from contract_helpers import (
    Conn,
    define_flow,
    expect_error,
    get_run,
    read_and_start,
    register_worker,
    rows,
    scalar,
    seconds_until_visible,
    single,
    start_flow,
    step_state,
    task,
)


def _fail(
    conn: Conn, run_id: uuid.UUID, step: str, retry: str | None, attempt: int | None = None
) -> None:
    rows(
        conn,
        "select * from pgflow.fail_task(%s, %s, 0, 'boom', %s::int, %s::text)",
        (run_id, step, attempt, retry),
    )


def test_retry_now_queues_the_task_again_without_delay(conn: Conn) -> None:
    define_flow(conn, "rm_now", [single("a")], max_attempts=3, base_delay=60)
    worker = register_worker(conn, "rm_now")
    run = start_flow(conn, "rm_now", {})
    (record,) = read_and_start(conn, "rm_now", worker)
    _fail(conn, run["run_id"], "a", "now", attempt=1)
    requeued = task(conn, run["run_id"], "a")
    assert (requeued["status"], requeued["attempts_count"]) == ("queued", 1)
    assert requeued["error_message"] == "boom"
    # with backoff it would be hidden for floor(60 * 2^1) = 120 s
    assert seconds_until_visible(conn, "rm_now", record["msg_id"]) <= 0
    (again,) = read_and_start(conn, "rm_now", worker)
    assert again["msg_id"] == record["msg_id"]
    assert task(conn, run["run_id"], "a")["attempts_count"] == 2


def test_retry_now_still_ends_when_the_attempts_are_used_up(conn: Conn) -> None:
    define_flow(conn, "rm_now_last", [single("a")], max_attempts=1)
    worker = register_worker(conn, "rm_now_last")
    run = start_flow(conn, "rm_now_last", {})
    read_and_start(conn, "rm_now_last", worker)
    _fail(conn, run["run_id"], "a", "now")
    assert task(conn, run["run_id"], "a")["status"] == "failed"
    assert get_run(conn, run["run_id"])["status"] == "failed"


def test_retry_never_fails_at_once_with_attempts_left(conn: Conn) -> None:
    define_flow(conn, "rm_never", [single("a"), single("b", "a")], max_attempts=5)
    worker = register_worker(conn, "rm_never")
    run = start_flow(conn, "rm_never", {})
    read_and_start(conn, "rm_never", worker)
    _fail(conn, run["run_id"], "a", "never", attempt=1)
    failed = task(conn, run["run_id"], "a")
    assert (failed["status"], failed["attempts_count"]) == ("failed", 1)
    assert step_state(conn, run["run_id"], "a")["status"] == "failed"
    assert get_run(conn, run["run_id"])["status"] == "failed"


def test_retry_never_applies_when_exhausted_skip(conn: Conn) -> None:
    define_flow(
        conn,
        "rm_never_skip",
        [single("a", when_exhausted="skip", max_attempts=4), single("b")],
    )
    worker = register_worker(conn, "rm_never_skip")
    run = start_flow(conn, "rm_never_skip", {})
    claimed = read_and_start(conn, "rm_never_skip", worker)
    assert {r["step_slug"] for r in claimed} == {"a", "b"}
    _fail(conn, run["run_id"], "a", "never")
    assert step_state(conn, run["run_id"], "a")["status"] == "skipped"
    rows(conn, "select * from pgflow.complete_task(%s, 'b', 0, '1'::jsonb)", (run["run_id"],))
    assert get_run(conn, run["run_id"])["status"] == "completed"


def test_backoff_and_null_are_the_usual_rule(conn: Conn) -> None:
    define_flow(conn, "rm_backoff", [single("a")], max_attempts=3, base_delay=60)
    worker = register_worker(conn, "rm_backoff")
    for retry in ("backoff", None):
        run = start_flow(conn, "rm_backoff", {})
        (record,) = read_and_start(conn, "rm_backoff", worker)
        _fail(conn, run["run_id"], "a", retry)
        assert task(conn, run["run_id"], "a")["status"] == "queued"
        assert seconds_until_visible(conn, "rm_backoff", record["msg_id"]) > 100


def test_an_unknown_retry_mode_is_refused(conn: Conn) -> None:
    define_flow(conn, "rm_bad", [single("a")])
    worker = register_worker(conn, "rm_bad")
    run = start_flow(conn, "rm_bad", {})
    read_and_start(conn, "rm_bad", worker)
    expect_error(
        conn,
        "select * from pgflow.fail_task(%s, 'a', 0, 'boom', null::int, 'later')",
        (run["run_id"],),
        "retry must be 'backoff', 'now' or 'never', got 'later'",
    )
    assert task(conn, run["run_id"], "a")["status"] == "started"


def test_report_tasks_takes_a_retry_mode_per_failure(conn: Conn) -> None:
    define_flow(conn, "rm_batch", [single("a")], max_attempts=3, base_delay=60)
    worker = register_worker(conn, "rm_batch")
    runs = [start_flow(conn, "rm_batch", {})["run_id"] for _ in range(4)]
    read_and_start(conn, "rm_batch", worker)
    applied = scalar(
        conn,
        "select pgflow.report_tasks(%s::uuid[], %s::text[], %s::int[], %s::jsonb, %s::text[],"
        " %s::int[], %s::text[])",
        (
            runs,
            ["a"] * 4,
            [0] * 4,
            "[1, null, null, null]",
            [None, "x", "y", "z"],
            [1, 1, 1, 1],
            [None, "now", "never", None],
        ),
    )
    assert applied == 4
    statuses = [task(conn, r, "a")["status"] for r in runs]
    assert statuses == ["completed", "queued", "failed", "queued"]
    visible = [
        seconds_until_visible(conn, "rm_batch", task(conn, r, "a")["message_id"]) <= 0
        for r in (runs[1], runs[3])
    ]
    assert visible == [True, False]


def test_report_tasks_refuses_retry_modes_of_another_length(conn: Conn) -> None:
    define_flow(conn, "rm_len", [single("a")])
    run = start_flow(conn, "rm_len", {})
    expect_error(
        conn,
        "select pgflow.report_tasks(%s::uuid[], array['a'], array[0], '[null]', array['x'],"
        " null, array['now', 'never'])",
        ([run["run_id"]],),
        "must all have one element per item",
    )


def test_report_and_claim_passes_retry_modes_on(conn: Conn) -> None:
    define_flow(conn, "rm_rac", [single("a")], max_attempts=3, base_delay=60)
    worker = register_worker(conn, "rm_rac")
    run = start_flow(conn, "rm_rac", {})
    read_and_start(conn, "rm_rac", worker)
    rows(
        conn,
        "select * from pgflow.report_and_claim('rm_rac', %s, 0, %s::uuid[], array['a'],"
        " array[0], '[null]', array['gone'], array[1], retry_modes => array['never'])",
        (worker, [run["run_id"]]),
    )
    assert task(conn, run["run_id"], "a")["status"] == "failed"
    assert get_run(conn, run["run_id"])["status"] == "failed"


def test_the_worker_role_may_fail_with_a_retry_mode(conn: Conn) -> None:
    privileges = scalar(
        conn,
        "select array[has_function_privilege('pgflow_worker',"
        " 'pgflow.fail_task(uuid, text, int, text, int, text, text, text)', 'execute'),"
        " has_function_privilege('pgflow_client',"
        " 'pgflow.fail_task(uuid, text, int, text, int, text, text, text)', 'execute')]",
    )
    assert privileges == [True, False]


@pytest.mark.parametrize("retry", ["now", "never"])
def test_a_stale_attempt_changes_nothing_whatever_its_retry_mode(conn: Conn, retry: str) -> None:
    define_flow(conn, f"rm_stale_{retry}", [single("a")], max_attempts=3)
    worker = register_worker(conn, f"rm_stale_{retry}")
    run = start_flow(conn, f"rm_stale_{retry}", {})
    read_and_start(conn, f"rm_stale_{retry}", worker)
    _fail(conn, run["run_id"], "a", retry, attempt=7)
    assert task(conn, run["run_id"], "a")["status"] == "started"
