"""Contract section 8: task statuses when a run fails (cancelled) or a step is skipped (skipped)."""

from __future__ import annotations

from contract_helpers import (
    Conn,
    archived_ids,
    complete_task,
    define_flow,
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
    task_statuses,
    tasks,
)


def test_run_failure_cancels_open_tasks_of_every_step(conn: Conn) -> None:
    define_flow(
        conn,
        "wide_fail",
        [map_step("fan"), single("bad", max_attempts=1), single("done")],
    )
    worker = register_worker(conn, "wide_fail")
    run = start_flow(conn, "wide_fail", [1, 2, 3])
    messages = read_messages(conn, "wide_fail")
    by_address = {(m["message"]["step_slug"], m["message"]["task_index"]): m for m in messages}
    # fan 0 claimed, fan 1 completed, fan 2 left queued
    start_tasks(
        conn,
        "wide_fail",
        [by_address[key]["msg_id"] for key in [("fan", 0), ("fan", 1), ("bad", 0), ("done", 0)]],
        worker,
    )
    complete_task(conn, run["run_id"], "fan", 1, "kept")
    complete_task(conn, run["run_id"], "done", 0, "kept too")

    fail_task(conn, run["run_id"], "bad", 0, "fatal")

    assert get_run(conn, run["run_id"])["status"] == "failed"
    assert task_statuses(conn, run["run_id"]) == {
        ("fan", 0): "cancelled",
        ("fan", 1): "completed",
        ("fan", 2): "cancelled",
        ("bad", 0): "failed",
        ("done", 0): "completed",
    }
    assert tasks(conn, run["run_id"], "fan")[1]["output"] == "kept"
    assert queue_messages(conn, "wide_fail") == {}
    assert {m["msg_id"] for m in messages} <= archived_ids(conn, "wide_fail")


def test_failure_in_one_run_leaves_other_runs_alone(conn: Conn) -> None:
    define_flow(conn, "two_runs", [single("a", max_attempts=1), single("b")])
    worker = register_worker(conn, "two_runs")
    doomed = start_flow(conn, "two_runs", {})
    healthy = start_flow(conn, "two_runs", {})
    read_and_start(conn, "two_runs", worker)
    fail_task(conn, doomed["run_id"], "a", 0, "fatal")
    assert get_run(conn, healthy["run_id"])["status"] == "started"
    assert task_statuses(conn, healthy["run_id"]) == {("a", 0): "started", ("b", 0): "started"}
    assert len(queue_messages(conn, "two_runs")) == 2


def test_skipped_step_skips_its_open_tasks(conn: Conn) -> None:
    define_flow(
        conn,
        "skip_open",
        [map_step("each", max_attempts=1, when_exhausted="skip"), single("other")],
    )
    worker = register_worker(conn, "skip_open")
    run = start_flow(conn, "skip_open", ["a", "b", "c", "d"])
    messages = read_messages(conn, "skip_open")
    by_address = {(m["message"]["step_slug"], m["message"]["task_index"]): m for m in messages}
    # each 0 fails, each 1 stays started, each 2 completed before, each 3 stays queued
    start_tasks(
        conn,
        "skip_open",
        [by_address[("each", i)]["msg_id"] for i in (0, 1, 2)],
        worker,
    )
    complete_task(conn, run["run_id"], "each", 2, "early")

    fail_task(conn, run["run_id"], "each", 0, "broken")

    state = step_state(conn, run["run_id"], "each")
    assert (state["status"], state["skip_reason"]) == ("skipped", "handler_failed")
    assert task_statuses(conn, run["run_id"]) == {
        ("each", 0): "failed",
        ("each", 1): "skipped",
        ("each", 2): "completed",
        ("each", 3): "skipped",
        ("other", 0): "queued",
    }
    each_msgs = {by_address[("each", i)]["msg_id"] for i in range(4)}
    assert not each_msgs & set(queue_messages(conn, "skip_open"))
    assert each_msgs <= archived_ids(conn, "skip_open")
    assert get_run(conn, run["run_id"])["status"] == "started"


def test_cancelled_and_skipped_tasks_cannot_be_claimed(conn: Conn) -> None:
    define_flow(conn, "no_revival", [single("bad", max_attempts=1), map_step("fan")])
    worker = register_worker(conn, "no_revival")
    run = start_flow(conn, "no_revival", [1, 2])
    messages = read_messages(conn, "no_revival")
    bad_msg = next(m["msg_id"] for m in messages if m["message"]["step_slug"] == "bad")
    start_tasks(conn, "no_revival", [bad_msg], worker)
    fail_task(conn, run["run_id"], "bad", 0, "fatal")
    assert start_tasks(conn, "no_revival", [m["msg_id"] for m in messages], worker) == []
    assert set(task_statuses(conn, run["run_id"]).values()) == {"failed", "cancelled"}
