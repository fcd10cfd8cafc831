"""Contract section 6: complete_task, from counters to run completion and type violations."""

from __future__ import annotations

from typing import Any

import pytest
from contract_helpers import (
    Conn,
    archived_ids,
    assert_archived,
    assert_recent,
    by_step,
    complete_task,
    define_flow,
    drive,
    fail_task,
    get_run,
    map_step,
    queue_messages,
    read_and_start,
    read_messages,
    register_worker,
    single,
    start_flow,
    start_tasks,
    step_state,
    step_states,
    task,
    task_statuses,
    tasks,
    unarchive,
)


def test_single_step_completion_completes_step_and_run(conn: Conn) -> None:
    define_flow(conn, "solo", [single("only")])
    worker = register_worker(conn, "solo")
    run = start_flow(conn, "solo", {"n": 1})
    (record,) = read_and_start(conn, "solo", worker)

    returned = complete_task(conn, run["run_id"], "only", 0, {"answer": 42})

    assert [(r["step_slug"], r["status"], r["output"]) for r in returned] == [
        ("only", "completed", {"answer": 42})
    ]
    done = task(conn, run["run_id"], "only")
    assert done["status"] == "completed"
    assert done["output"] == {"answer": 42}
    assert_recent(conn, done["completed_at"])
    state = step_state(conn, run["run_id"], "only")
    assert state["status"] == "completed"
    assert state["output"] == {"answer": 42}
    assert state["remaining_tasks"] == 0
    assert_recent(conn, state["completed_at"])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["remaining_steps"] == 0
    assert finished["output"] == {"only": {"answer": 42}}
    assert_recent(conn, finished["completed_at"])
    assert finished["failed_at"] is None
    assert_archived(conn, "solo", [record["msg_id"]])


def test_completion_starts_the_next_step(conn: Conn) -> None:
    define_flow(conn, "chain", [single("a"), single("b", "a"), single("c", "b")])
    worker = register_worker(conn, "chain")
    run = start_flow(conn, "chain", {})
    read_and_start(conn, "chain", worker)
    complete_task(conn, run["run_id"], "a", 0, "A")
    states = step_states(conn, run["run_id"])
    assert states["a"]["status"] == "completed"
    assert states["b"]["status"] == "started"
    assert states["b"]["remaining_deps"] == 0
    assert states["b"]["remaining_tasks"] == 1
    assert states["c"]["status"] == "created"
    assert states["c"]["remaining_deps"] == 1
    assert get_run(conn, run["run_id"])["remaining_steps"] == 2
    b_task = task(conn, run["run_id"], "b")
    assert b_task["status"] == "queued"
    assert queue_messages(conn, "chain")[b_task["message_id"]]["message"]["step_slug"] == "b"


def test_join_waits_for_every_dependency(conn: Conn) -> None:
    define_flow(conn, "join", [single("left"), single("right"), single("both", "left", "right")])
    worker = register_worker(conn, "join")
    run = start_flow(conn, "join", {})
    read_and_start(conn, "join", worker)
    complete_task(conn, run["run_id"], "left", 0, 1)
    both = step_state(conn, run["run_id"], "both")
    assert (both["status"], both["remaining_deps"]) == ("created", 1)
    complete_task(conn, run["run_id"], "right", 0, 2)
    both = step_state(conn, run["run_id"], "both")
    assert (both["status"], both["remaining_deps"]) == ("started", 0)


def test_run_output_holds_only_leaf_steps(conn: Conn) -> None:
    define_flow(
        conn,
        "diamond",
        [
            single("a"),
            single("b", "a"),
            single("c", "a"),
            single("d", "b", "c"),
            single("e"),
        ],
    )
    worker = register_worker(conn, "diamond")
    run = start_flow(conn, "diamond", {})
    drive(conn, "diamond", worker, by_step({"a": 1, "b": 2, "c": 3, "d": {"sum": 5}, "e": [9]}))
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"d": {"sum": 5}, "e": [9]}


def test_leaf_with_null_output_is_kept_in_run_output(conn: Conn) -> None:
    define_flow(conn, "null_leaf", [single("quiet"), single("loud")])
    worker = register_worker(conn, "null_leaf")
    run = start_flow(conn, "null_leaf", {})
    drive(conn, "null_leaf", worker, by_step({"quiet": None, "loud": "hi"}))
    assert get_run(conn, run["run_id"])["output"] == {"quiet": None, "loud": "hi"}


def test_duplicate_completion_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "dupes", [map_step("each")])
    worker = register_worker(conn, "dupes")
    run = start_flow(conn, "dupes", [1, 2])
    claimed = read_and_start(conn, "dupes", worker)
    complete_task(conn, run["run_id"], "each", 0, "first")
    # a redelivered message: the duplicate must archive it again and change nothing else
    unarchive(conn, "dupes", claimed[0]["msg_id"])
    complete_task(conn, run["run_id"], "each", 0, "second")
    state = step_state(conn, run["run_id"], "each")
    assert (state["status"], state["remaining_tasks"]) == ("started", 1)
    assert task(conn, run["run_id"], "each", 0)["output"] == "first"
    assert get_run(conn, run["run_id"])["remaining_steps"] == 1
    assert_archived(conn, "dupes", [claimed[0]["msg_id"]])
    # the run still finishes normally
    complete_task(conn, run["run_id"], "each", 1, "other")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"each": ["first", "other"]}


def test_completing_a_queued_task_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "not_claimed", [single("a")])
    run = start_flow(conn, "not_claimed", {})
    msg_id = task(conn, run["run_id"], "a")["message_id"]
    complete_task(conn, run["run_id"], "a", 0, "too early")
    # the task still waits for a worker, so its message must stay in the queue
    assert msg_id in queue_messages(conn, "not_claimed")
    assert task(conn, run["run_id"], "a")["status"] == "queued"
    assert task(conn, run["run_id"], "a")["output"] is None
    assert step_state(conn, run["run_id"], "a")["remaining_tasks"] == 1
    assert get_run(conn, run["run_id"])["status"] == "started"


def test_late_callback_after_step_was_skipped_changes_nothing(conn: Conn) -> None:
    define_flow(
        conn,
        "late",
        [map_step("each", max_attempts=1, when_exhausted="skip"), single("tail")],
    )
    worker = register_worker(conn, "late")
    run = start_flow(conn, "late", [1, 2])
    claimed = read_and_start(conn, "late", worker)
    fail_task(conn, run["run_id"], "each", 0, "broken")
    assert step_state(conn, run["run_id"], "each")["status"] == "skipped"
    late_msg = task(conn, run["run_id"], "each", 1)["message_id"]
    unarchive(conn, "late", late_msg)

    complete_task(conn, run["run_id"], "each", 1, "too late")

    late_task = task(conn, run["run_id"], "each", 1)
    assert late_task["status"] == "skipped"
    assert late_task["output"] is None
    state = step_state(conn, run["run_id"], "each")
    assert state["status"] == "skipped"
    assert state["output"] is None
    assert get_run(conn, run["run_id"])["status"] == "started"
    each_msgs = [r["msg_id"] for r in claimed if r["step_slug"] == "each"]
    assert_archived(conn, "late", each_msgs)


def test_completion_for_failed_run_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "failed_run", [single("bad", max_attempts=1), single("slow")])
    worker = register_worker(conn, "failed_run")
    run = start_flow(conn, "failed_run", {})
    claimed = read_and_start(conn, "failed_run", worker)
    fail_task(conn, run["run_id"], "bad", 0, "boom")
    assert get_run(conn, run["run_id"])["status"] == "failed"
    unarchive(conn, "failed_run", task(conn, run["run_id"], "slow")["message_id"])

    complete_task(conn, run["run_id"], "slow", 0, "finished anyway")

    slow = task(conn, run["run_id"], "slow")
    assert slow["status"] == "cancelled"
    assert slow["output"] is None
    assert step_state(conn, run["run_id"], "slow")["status"] != "completed"
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    assert finished["output"] is None
    assert finished["completed_at"] is None
    assert_archived(conn, "failed_run", [r["msg_id"] for r in claimed])


# ---------------------------------------------------------------------------------------------
# Type violations: a single step feeding a map must produce an array


@pytest.mark.parametrize(
    ("output", "json_type"),
    [
        ({"items": [1]}, "object"),
        ("1,2", "string"),
        (3, "number"),
        (True, "boolean"),
        (None, "null"),
    ],
)
def test_type_violation_message(conn: Conn, output: Any, json_type: str) -> None:
    define_flow(conn, "typed", [single("list"), map_step("each", "list")])
    worker = register_worker(conn, "typed")
    run = start_flow(conn, "typed", {})
    read_and_start(conn, "typed", worker)
    complete_task(conn, run["run_id"], "list", 0, output)
    failed = task(conn, run["run_id"], "list")
    assert failed["status"] == "failed"
    assert failed["error_message"] == f"[TYPE_VIOLATION] Produced {json_type} instead of array"


def test_type_violation_fails_step_and_run_without_retry(conn: Conn) -> None:
    define_flow(
        conn,
        "violation",
        [
            single("list", max_attempts=5, when_exhausted="skip"),
            map_step("each", "list"),
            single("claimed_sibling"),
            map_step("queued_sibling"),
        ],
    )
    worker = register_worker(conn, "violation")
    run = start_flow(conn, "violation", [1, 2])
    # claim list and claimed_sibling; leave queued_sibling's two tasks queued
    messages = read_messages(conn, "violation")
    wanted = {"list", "claimed_sibling"}
    start_tasks(
        conn,
        "violation",
        [m["msg_id"] for m in messages if m["message"]["step_slug"] in wanted],
        worker,
    )
    assert len(messages) == 4

    complete_task(conn, run["run_id"], "list", 0, {"not": "an array"})

    failed = task(conn, run["run_id"], "list")
    assert failed["status"] == "failed"
    assert failed["attempts_count"] == 1, "a type violation is not retried"
    assert_recent(conn, failed["failed_at"])
    state = step_state(conn, run["run_id"], "list")
    assert state["status"] == "failed"
    assert "[TYPE_VIOLATION]" in (state["error_message"] or "")
    assert_recent(conn, state["failed_at"])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    assert_recent(conn, finished["failed_at"])
    assert finished["completed_at"] is None
    statuses = task_statuses(conn, run["run_id"])
    assert statuses == {
        ("list", 0): "failed",
        ("claimed_sibling", 0): "cancelled",
        ("queued_sibling", 0): "cancelled",
        ("queued_sibling", 1): "cancelled",
    }
    assert tasks(conn, run["run_id"], "each") == []
    assert queue_messages(conn, "violation") == {}
    assert {m["msg_id"] for m in messages} <= archived_ids(conn, "violation")


def test_array_output_passes_the_type_check(conn: Conn) -> None:
    define_flow(conn, "arrays", [single("list"), map_step("each", "list")])
    worker = register_worker(conn, "arrays")
    run = start_flow(conn, "arrays", {})
    read_and_start(conn, "arrays", worker)
    complete_task(conn, run["run_id"], "list", 0, [1, 2])
    assert task(conn, run["run_id"], "list")["status"] == "completed"
    assert step_state(conn, run["run_id"], "each")["initial_tasks"] == 2


def test_non_array_output_is_fine_without_map_child(conn: Conn) -> None:
    define_flow(conn, "objects", [single("a"), single("b", "a")])
    worker = register_worker(conn, "objects")
    run = start_flow(conn, "objects", {})
    read_and_start(conn, "objects", worker)
    complete_task(conn, run["run_id"], "a", 0, {"not": "an array"})
    assert step_state(conn, run["run_id"], "a")["status"] == "completed"
    assert step_state(conn, run["run_id"], "b")["status"] == "started"
