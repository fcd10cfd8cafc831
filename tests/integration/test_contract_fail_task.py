"""Contract section 6: fail_task, retries with backoff, and what exhaustion does."""

from __future__ import annotations

from decimal import Decimal

import pytest
from contract_helpers import (
    Conn,
    assert_archived,
    assert_recent,
    assert_visible_after,
    complete_task,
    define_flow,
    fail_task,
    get_run,
    make_visible,
    map_step,
    queue_messages,
    read_and_start,
    read_messages,
    register_worker,
    scalar,
    server_clock,
    single,
    start_flow,
    start_tasks,
    step_state,
    step_states,
    task,
    task_statuses,
    unarchive,
)

# ---------------------------------------------------------------------------------------------
# calculate_retry_delay


@pytest.mark.parametrize(
    ("base_delay", "attempts", "expected"),
    [
        (1, 0, 1),
        (1, 1, 2),
        (1, 2, 4),
        (2, 3, 16),
        (5, 1, 10),
        (3, 10, 3072),
        (0, 7, 0),
        (Decimal("1.5"), 2, 6),
        (Decimal("0.7"), 1, 1),
        (Decimal("0.4"), 0, 0),
    ],
)
def test_calculate_retry_delay(
    conn: Conn, base_delay: int | Decimal, attempts: int, expected: int
) -> None:
    delay = scalar(
        conn, "select pgflow.calculate_retry_delay(%s::numeric, %s::int)", (base_delay, attempts)
    )
    assert delay == expected


@pytest.mark.parametrize(
    ("base_delay", "attempts"),
    [(1, 12), (1, 40), (1, 1000), (1, 2147483647), (100000, 0), (5, 30)],
)
def test_calculate_retry_delay_is_capped_at_one_hour(
    conn: Conn, base_delay: int, attempts: int
) -> None:
    delay = scalar(
        conn, "select pgflow.calculate_retry_delay(%s::numeric, %s::int)", (base_delay, attempts)
    )
    assert delay == 3600


def test_calculate_retry_delay_named_arguments(conn: Conn) -> None:
    delay = scalar(
        conn, "select pgflow.calculate_retry_delay(base_delay => 2, attempts_count => 2)"
    )
    assert delay == 8


# ---------------------------------------------------------------------------------------------
# Retries


def test_failure_with_attempts_left_requeues_with_backoff(conn: Conn) -> None:
    define_flow(conn, "retry", [single("flaky", max_attempts=3, base_delay=3)], base_delay=7)
    worker = register_worker(conn, "retry")
    run = start_flow(conn, "retry", {})
    (record,) = read_and_start(conn, "retry", worker)

    before = server_clock(conn)
    returned = fail_task(conn, run["run_id"], "flaky", 0, "first failure")
    after = server_clock(conn)

    assert [(r["step_slug"], r["status"]) for r in returned] == [("flaky", "queued")]
    requeued = task(conn, run["run_id"], "flaky")
    assert requeued["status"] == "queued"
    assert requeued["error_message"] == "first failure"
    assert requeued["attempts_count"] == 1
    assert requeued["message_id"] == record["msg_id"], "a retry reuses the task's message"
    # step base_delay 3 (not the flow's 7): floor(3 * 2^1) = 6 seconds
    assert_visible_after(conn, "retry", record["msg_id"], 6, before, after)
    assert read_messages(conn, "retry") == []
    assert step_state(conn, run["run_id"], "flaky")["status"] == "started"
    assert get_run(conn, run["run_id"])["status"] == "started"

    make_visible(conn, "retry", [record["msg_id"]])
    (record,) = read_and_start(conn, "retry", worker)
    assert task(conn, run["run_id"], "flaky")["attempts_count"] == 2
    before = server_clock(conn)
    fail_task(conn, run["run_id"], "flaky", 0, "second failure")
    after = server_clock(conn)
    # floor(3 * 2^2) = 12 seconds
    assert_visible_after(conn, "retry", record["msg_id"], 12, before, after)
    assert task(conn, run["run_id"], "flaky")["error_message"] == "second failure"

    make_visible(conn, "retry", [record["msg_id"]])
    read_and_start(conn, "retry", worker)
    complete_task(conn, run["run_id"], "flaky", 0, "third time lucky")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"flaky": "third time lucky"}
    assert task(conn, run["run_id"], "flaky")["attempts_count"] == 3


def test_retry_inherits_flow_max_attempts_and_base_delay(conn: Conn) -> None:
    define_flow(conn, "inherit", [single("a")], max_attempts=2, base_delay=4)
    worker = register_worker(conn, "inherit")
    run = start_flow(conn, "inherit", {})
    (record,) = read_and_start(conn, "inherit", worker)
    before = server_clock(conn)
    fail_task(conn, run["run_id"], "a", 0, "once")
    after = server_clock(conn)
    assert task(conn, run["run_id"], "a")["status"] == "queued"
    # floor(4 * 2^1) = 8 seconds
    assert_visible_after(conn, "inherit", record["msg_id"], 8, before, after)
    make_visible(conn, "inherit", [record["msg_id"]])
    read_and_start(conn, "inherit", worker)
    fail_task(conn, run["run_id"], "a", 0, "twice")
    assert task(conn, run["run_id"], "a")["status"] == "failed"
    assert get_run(conn, run["run_id"])["status"] == "failed"


def test_retry_does_not_apply_start_delay_again(conn: Conn) -> None:
    define_flow(conn, "delayed", [single("a", start_delay=300, base_delay=1, max_attempts=2)])
    worker = register_worker(conn, "delayed")
    run = start_flow(conn, "delayed", {})
    msg_id = task(conn, run["run_id"], "a")["message_id"]
    make_visible(conn, "delayed", [msg_id])
    read_and_start(conn, "delayed", worker)
    before = server_clock(conn)
    fail_task(conn, run["run_id"], "a", 0, "oops")
    after = server_clock(conn)
    # floor(1 * 2^1) = 2 seconds, without the 300 s start delay
    assert_visible_after(conn, "delayed", msg_id, 2, before, after)


# ---------------------------------------------------------------------------------------------
# Exhaustion: when_exhausted = fail


def test_exhausted_task_fails_step_and_run(conn: Conn) -> None:
    define_flow(
        conn,
        "exhaust",
        [
            single("bad", max_attempts=1),
            single("busy"),
            map_step("waiting"),
            single("after", "bad"),
        ],
    )
    worker = register_worker(conn, "exhaust")
    run = start_flow(conn, "exhaust", [1, 2])
    messages = read_messages(conn, "exhaust")
    claim = [m["msg_id"] for m in messages if m["message"]["step_slug"] in ("bad", "busy")]
    start_tasks(conn, "exhaust", claim, worker)

    fail_task(conn, run["run_id"], "bad", 0, "gave up")

    bad = task(conn, run["run_id"], "bad")
    assert bad["status"] == "failed"
    assert bad["error_message"] == "gave up"
    assert_recent(conn, bad["failed_at"])
    state = step_state(conn, run["run_id"], "bad")
    assert state["status"] == "failed"
    assert state["error_message"] == "gave up"
    assert_recent(conn, state["failed_at"])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    assert_recent(conn, finished["failed_at"])
    assert finished["completed_at"] is None
    assert task_statuses(conn, run["run_id"]) == {
        ("bad", 0): "failed",
        ("busy", 0): "cancelled",
        ("waiting", 0): "cancelled",
        ("waiting", 1): "cancelled",
    }
    assert queue_messages(conn, "exhaust") == {}
    assert_archived(conn, "exhaust", [m["msg_id"] for m in messages])


def test_fail_task_after_run_failed_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "after_fail", [single("bad", max_attempts=1), single("slow")])
    worker = register_worker(conn, "after_fail")
    run = start_flow(conn, "after_fail", {})
    read_and_start(conn, "after_fail", worker)
    fail_task(conn, run["run_id"], "bad", 0, "first")
    failed_at = get_run(conn, run["run_id"])["failed_at"]
    slow_msg = task(conn, run["run_id"], "slow")["message_id"]
    unarchive(conn, "after_fail", slow_msg)
    fail_task(conn, run["run_id"], "slow", 0, "late failure")
    assert_archived(conn, "after_fail", [slow_msg])
    slow = task(conn, run["run_id"], "slow")
    assert slow["status"] == "cancelled"
    assert slow["error_message"] != "late failure"
    assert step_state(conn, run["run_id"], "slow")["status"] != "failed"
    assert get_run(conn, run["run_id"])["failed_at"] == failed_at


def test_fail_task_on_completed_task_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "completed_first", [single("a"), single("b")])
    worker = register_worker(conn, "completed_first")
    run = start_flow(conn, "completed_first", {})
    read_and_start(conn, "completed_first", worker)
    complete_task(conn, run["run_id"], "a", 0, "ok")
    fail_task(conn, run["run_id"], "a", 0, "too late")
    a_task = task(conn, run["run_id"], "a")
    assert (a_task["status"], a_task["output"]) == ("completed", "ok")
    assert step_state(conn, run["run_id"], "a")["status"] == "completed"
    assert get_run(conn, run["run_id"])["status"] == "started"


# ---------------------------------------------------------------------------------------------
# Exhaustion: when_exhausted = skip


def test_exhausted_with_skip_skips_step_and_run_continues(conn: Conn) -> None:
    define_flow(
        conn,
        "skipper",
        [
            single("optional", max_attempts=1, when_exhausted="skip"),
            single("next", "optional"),
            map_step("each", "optional"),
        ],
    )
    worker = register_worker(conn, "skipper")
    run = start_flow(conn, "skipper", {})
    (record,) = read_and_start(conn, "skipper", worker)

    fail_task(conn, run["run_id"], "optional", 0, "no luck")

    optional_task = task(conn, run["run_id"], "optional")
    assert optional_task["status"] == "failed"
    assert optional_task["error_message"] == "no luck"
    states = step_states(conn, run["run_id"])
    assert states["optional"]["status"] == "skipped"
    assert states["optional"]["skip_reason"] == "handler_failed"
    assert_recent(conn, states["optional"]["skipped_at"])
    assert states["optional"]["remaining_tasks"] is None
    assert states["next"]["remaining_deps"] == 0
    assert states["next"]["status"] == "started"
    # a map child whose only parent was skipped gets zero tasks, so it completes empty
    assert states["each"]["initial_tasks"] == 0
    assert states["each"]["status"] == "completed"
    assert states["each"]["output"] == []
    assert get_run(conn, run["run_id"])["status"] == "started"
    assert_archived(conn, "skipper", [record["msg_id"]])

    (next_record,) = read_and_start(conn, "skipper", worker)
    assert next_record["step_slug"] == "next"
    assert next_record["input"] == {}
    complete_task(conn, run["run_id"], "next", 0, "carried on")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"next": "carried on", "each": []}


def test_skipped_leaf_is_left_out_of_run_output(conn: Conn) -> None:
    define_flow(
        conn,
        "skipped_leaf",
        [single("fine"), single("flaky", max_attempts=1, when_exhausted="skip")],
    )
    worker = register_worker(conn, "skipped_leaf")
    run = start_flow(conn, "skipped_leaf", {})
    read_and_start(conn, "skipped_leaf", worker)
    fail_task(conn, run["run_id"], "flaky", 0, "nope")
    complete_task(conn, run["run_id"], "fine", 0, 1)
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"fine": 1}


def test_run_with_only_skipped_leaves_completes_with_null_output(conn: Conn) -> None:
    define_flow(conn, "all_skipped", [single("flaky", max_attempts=1, when_exhausted="skip")])
    worker = register_worker(conn, "all_skipped")
    run = start_flow(conn, "all_skipped", {})
    read_and_start(conn, "all_skipped", worker)
    fail_task(conn, run["run_id"], "flaky", 0, "nope")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] is None


# ---------------------------------------------------------------------------------------------
# Exhaustion: when_exhausted = skip-cascade


def test_exhausted_with_skip_cascade_skips_dependents(conn: Conn) -> None:
    define_flow(
        conn,
        "cascade",
        [
            single("root", max_attempts=1, when_exhausted="skip-cascade"),
            single("child", "root"),
            map_step("grandchild", "child"),
            single("independent"),
        ],
    )
    worker = register_worker(conn, "cascade")
    run = start_flow(conn, "cascade", {})
    read_and_start(conn, "cascade", worker)

    fail_task(conn, run["run_id"], "root", 0, "broken")

    states = step_states(conn, run["run_id"])
    assert {slug: (s["status"], s["skip_reason"]) for slug, s in states.items()} == {
        "root": ("skipped", "handler_failed"),
        "child": ("skipped", "dependency_skipped"),
        "grandchild": ("skipped", "dependency_skipped"),
        "independent": ("started", None),
    }
    assert get_run(conn, run["run_id"])["remaining_steps"] == 1
    complete_task(conn, run["run_id"], "independent", 0, "fine")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"independent": "fine"}
