"""Contract section 9 (our addition): pgflow.cancel_run(run_id uuid)."""

from __future__ import annotations

import uuid

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
    task,
    task_statuses,
    unarchive,
)


def _started_run(conn: Conn) -> tuple[uuid.UUID, list[int]]:
    define_flow(conn, "cancellable", [map_step("fan"), single("solo"), single("after", "solo")])
    worker = register_worker(conn, "cancellable")
    run = start_flow(conn, "cancellable", [1, 2])
    messages = read_messages(conn, "cancellable")
    fan_0 = next(
        m["msg_id"]
        for m in messages
        if m["message"]["step_slug"] == "fan" and m["message"]["task_index"] == 0
    )
    solo = next(m["msg_id"] for m in messages if m["message"]["step_slug"] == "solo")
    start_tasks(conn, "cancellable", [fan_0, solo], worker)
    complete_task(conn, run["run_id"], "fan", 0, "finished before cancel")
    return run["run_id"], [m["msg_id"] for m in messages]


def test_cancel_run_cancels_open_tasks_and_archives_messages(conn: Conn) -> None:
    run_id, msg_ids = _started_run(conn)

    conn.execute("select pgflow.cancel_run(run_id => %s)", (run_id,))

    finished = get_run(conn, run_id)
    assert finished["status"] not in ("started", "completed")
    assert finished["completed_at"] is None
    assert task_statuses(conn, run_id) == {
        ("fan", 0): "completed",
        ("fan", 1): "cancelled",
        ("solo", 0): "cancelled",
    }
    assert queue_messages(conn, "cancellable") == {}
    assert set(msg_ids) <= archived_ids(conn, "cancellable")


def test_late_callbacks_after_cancel_are_ignored(conn: Conn) -> None:
    run_id, _ = _started_run(conn)
    conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    status = get_run(conn, run_id)["status"]
    unarchive(conn, "cancellable", task(conn, run_id, "solo")["message_id"])

    complete_task(conn, run_id, "solo", 0, "late")
    fail_task(conn, run_id, "fan", 1, "late failure")

    assert task(conn, run_id, "solo")["status"] == "cancelled"
    assert task(conn, run_id, "solo")["output"] is None
    assert task(conn, run_id, "fan", 1)["status"] == "cancelled"
    assert step_state(conn, run_id, "solo")["status"] != "completed"
    assert step_state(conn, run_id, "after")["status"] == "created"
    assert get_run(conn, run_id)["status"] == status
    assert queue_messages(conn, "cancellable") == {}


def test_cancelled_run_tasks_cannot_be_claimed(conn: Conn) -> None:
    run_id, msg_ids = _started_run(conn)
    worker = register_worker(conn, "cancellable")
    conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    assert start_tasks(conn, "cancellable", msg_ids, worker) == []


def test_cancel_run_leaves_other_runs_running(conn: Conn) -> None:
    run_id, _ = _started_run(conn)
    other = start_flow(conn, "cancellable", [5])
    conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    assert get_run(conn, other["run_id"])["status"] == "started"
    worker = register_worker(conn, "cancellable")
    claimed = read_and_start(conn, "cancellable", worker)
    assert {r["run_id"] for r in claimed} == {other["run_id"]}


def test_cancel_of_finished_run_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "finished", [single("a")])
    worker = register_worker(conn, "finished")
    run = start_flow(conn, "finished", {})
    read_and_start(conn, "finished", worker)
    complete_task(conn, run["run_id"], "a", 0, "ok")
    before = get_run(conn, run["run_id"])
    conn.execute("select pgflow.cancel_run(%s)", (run["run_id"],))
    assert get_run(conn, run["run_id"]) == before
    assert task(conn, run["run_id"], "a")["status"] == "completed"
