"""Contract section 7: requeue_stalled_tasks, with the step's timeout and a final terminalization."""

from __future__ import annotations

import uuid

from contract_helpers import (
    Conn,
    assert_archived,
    assert_recent,
    assert_visible_after,
    complete_task,
    define_flow,
    expect_error,
    fail_task,
    get_run,
    map_step,
    read_and_start,
    read_messages,
    register_worker,
    rows,
    scalar,
    seconds_until_visible,
    server_clock,
    single,
    start_flow,
    start_tasks,
    step_state,
    task,
    tasks,
)


def _stall(conn: Conn, run_id: uuid.UUID, step_slug: str, seconds: int) -> None:
    """Pretend the task was claimed ``seconds`` ago by a worker that then vanished."""
    conn.execute(
        "update pgflow.step_tasks set started_at = now() - make_interval(secs => %s),"
        " queued_at = least(queued_at, now() - make_interval(secs => %s))"
        " where run_id = %s and step_slug = %s",
        (seconds, seconds + 1, run_id, step_slug),
    )


def _requeue(conn: Conn) -> int:
    return int(scalar(conn, "select pgflow.requeue_stalled_tasks()"))


def test_stalled_task_goes_back_to_queue(conn: Conn) -> None:
    define_flow(conn, "stall", [single("a", timeout=10)])
    worker = register_worker(conn, "stall")
    run = start_flow(conn, "stall", {})
    (record,) = read_and_start(conn, "stall", worker)
    _stall(conn, run["run_id"], "a", 41)

    before = server_clock(conn)
    assert _requeue(conn) == 1
    after = server_clock(conn)

    requeued = task(conn, run["run_id"], "a")
    assert requeued["status"] == "queued"
    assert requeued["requeued_count"] == 1
    assert_recent(conn, requeued["last_requeued_at"])
    assert requeued["permanently_stalled_at"] is None
    assert_visible_after(conn, "stall", record["msg_id"], 0, before, after)
    (again,) = read_and_start(conn, "stall", worker)
    assert again["msg_id"] == record["msg_id"]
    assert task(conn, run["run_id"], "a")["status"] == "started"


def test_task_within_timeout_plus_30_seconds_is_left_alone(conn: Conn) -> None:
    define_flow(conn, "patient", [single("a", timeout=10)])
    worker = register_worker(conn, "patient")
    run = start_flow(conn, "patient", {})
    read_and_start(conn, "patient", worker)
    _stall(conn, run["run_id"], "a", 35)
    assert _requeue(conn) == 0
    left = task(conn, run["run_id"], "a")
    assert (left["status"], left["requeued_count"]) == ("started", 0)


def test_step_timeout_is_used_not_the_flow_timeout(conn: Conn) -> None:
    define_flow(conn, "step_timeout", [single("slow", timeout=200)], timeout=10)
    worker = register_worker(conn, "step_timeout")
    run = start_flow(conn, "step_timeout", {})
    read_and_start(conn, "step_timeout", worker)
    # stalled by the flow's timeout (10 + 30), not by the step's (200 + 30)
    _stall(conn, run["run_id"], "slow", 120)
    assert _requeue(conn) == 0
    assert task(conn, run["run_id"], "slow")["status"] == "started"
    _stall(conn, run["run_id"], "slow", 240)
    assert _requeue(conn) == 1
    assert task(conn, run["run_id"], "slow")["status"] == "queued"


def test_flow_timeout_is_used_when_step_has_none(conn: Conn) -> None:
    define_flow(conn, "flow_timeout", [single("a")], timeout=20)
    worker = register_worker(conn, "flow_timeout")
    run = start_flow(conn, "flow_timeout", {})
    read_and_start(conn, "flow_timeout", worker)
    _stall(conn, run["run_id"], "a", 45)
    assert _requeue(conn) == 0
    _stall(conn, run["run_id"], "a", 55)
    assert _requeue(conn) == 1


def test_queued_and_finished_tasks_are_not_requeued(conn: Conn) -> None:
    define_flow(conn, "calm", [single("queued_one", timeout=1), single("done_one", timeout=1)])
    worker = register_worker(conn, "calm")
    run = start_flow(conn, "calm", {})
    done_msg = task(conn, run["run_id"], "done_one")["message_id"]
    start_tasks(conn, "calm", [done_msg], worker)
    complete_task(conn, run["run_id"], "done_one", 0, "ok")
    _stall(conn, run["run_id"], "done_one", 3600)
    conn.execute(
        "update pgflow.step_tasks set queued_at = now() - interval '1 hour'"
        " where run_id = %s and step_slug = 'queued_one'",
        (run["run_id"],),
    )
    assert _requeue(conn) == 0
    assert task(conn, run["run_id"], "done_one")["status"] == "completed"
    assert task(conn, run["run_id"], "queued_one")["requeued_count"] == 0


def _claim_and_stall(conn: Conn, flow: str, worker: uuid.UUID, run_id: uuid.UUID) -> int:
    (record,) = read_and_start(conn, flow, worker)
    _stall(conn, run_id, record["step_slug"], 3600)
    return int(record["msg_id"])


def test_fourth_stall_fails_the_task_like_exhaustion(conn: Conn) -> None:
    define_flow(conn, "hopeless", [single("a", timeout=5, max_attempts=10), single("b", "a")])
    worker = register_worker(conn, "hopeless")
    run = start_flow(conn, "hopeless", {})
    for requeues in (1, 2, 3):
        _claim_and_stall(conn, "hopeless", worker, run["run_id"])
        assert _requeue(conn) == 1
        stalled = task(conn, run["run_id"], "a")
        assert (stalled["status"], stalled["requeued_count"]) == ("queued", requeues)
        assert stalled["permanently_stalled_at"] is None

    msg_id = _claim_and_stall(conn, "hopeless", worker, run["run_id"])
    _requeue(conn)

    final = task(conn, run["run_id"], "a")
    assert_recent(conn, final["permanently_stalled_at"])
    assert final["status"] == "failed"
    assert final["requeued_count"] == 3
    assert step_state(conn, run["run_id"], "a")["status"] == "failed"
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    assert_recent(conn, finished["failed_at"])
    assert_archived(conn, "hopeless", [msg_id])
    # and nothing is requeued again afterwards
    assert _requeue(conn) == 0
    assert task(conn, run["run_id"], "a")["status"] == "failed"


def test_permanent_stall_with_skip_lets_run_complete(conn: Conn) -> None:
    define_flow(
        conn,
        "stall_skip",
        [single("a", timeout=5, max_attempts=10, when_exhausted="skip"), single("b")],
    )
    worker = register_worker(conn, "stall_skip")
    run = start_flow(conn, "stall_skip", {})
    assert len(read_and_start(conn, "stall_skip", worker)) == 2
    complete_task(conn, run["run_id"], "b", 0, "fine")
    _stall(conn, run["run_id"], "a", 3600)
    for _ in range(3):
        assert _requeue(conn) == 1
        _claim_and_stall(conn, "stall_skip", worker, run["run_id"])
    _requeue(conn)

    state = step_state(conn, run["run_id"], "a")
    assert (state["status"], state["skip_reason"]) == ("skipped", "handler_failed")
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"b": "fine"}


def test_tasks_of_failed_runs_are_not_revived(conn: Conn) -> None:
    define_flow(conn, "dead_run", [single("bad", max_attempts=1), single("slow", timeout=1)])
    worker = register_worker(conn, "dead_run")
    run = start_flow(conn, "dead_run", {})
    read_and_start(conn, "dead_run", worker)
    fail_task(conn, run["run_id"], "bad", 0, "fatal")
    _stall(conn, run["run_id"], "slow", 3600)
    assert _requeue(conn) == 0
    assert task(conn, run["run_id"], "slow")["status"] == "cancelled"


# ---------------------------------------------------------------------------------------------
# mark_worker_stopped


def test_mark_worker_stopped(conn: Conn) -> None:
    define_flow(conn, "workers", [single("a")])
    stopping = register_worker(conn, "workers")
    running = register_worker(conn, "workers")
    conn.execute("select pgflow.mark_worker_stopped(worker_id => %s)", (stopping,))
    stopped_at = scalar(
        conn, "select stopped_at from pgflow.workers where worker_id = %s", (stopping,)
    )
    assert_recent(conn, stopped_at)
    assert (
        scalar(conn, "select stopped_at from pgflow.workers where worker_id = %s", (running,))
        is None
    )


def test_worker_row_defaults(conn: Conn) -> None:
    worker = register_worker(conn, "any_queue")
    row = scalar(
        conn,
        "select to_jsonb(w) from pgflow.workers w where worker_id = %s",
        (worker,),
    )
    assert row["queue_name"] == "any_queue"
    assert row["function_name"] == "contract_tests"
    assert row["started_at"] is not None
    assert row["stopped_at"] is None and row["deprecated_at"] is None
    assert "last_heartbeat_at" in row


# ---------------------------------------------------------------------------------------------
# set_vt_batch


def test_set_vt_batch_sets_each_message_offset(conn: Conn) -> None:
    define_flow(conn, "vt_batch", [map_step("each")])
    run = start_flow(conn, "vt_batch", [1, 2, 3])
    msg_ids = [t["message_id"] for t in tasks(conn, run["run_id"])]
    before = server_clock(conn)
    returned = rows(
        conn,
        "select * from pgflow.set_vt_batch(queue_name => 'vt_batch', msg_ids => %s::bigint[],"
        " vt_offsets => %s::int[])",
        (msg_ids, [10, 200, 0]),
    )
    after = server_clock(conn)
    assert sorted(r["msg_id"] for r in returned) == sorted(msg_ids)
    assert all("vt" in r for r in returned)
    expected = dict(zip(msg_ids, [10, 200, 0], strict=True))
    for msg_id, offset in expected.items():
        assert_visible_after(conn, "vt_batch", msg_id, offset, before, after)
    assert [m["msg_id"] for m in read_messages(conn, "vt_batch")] == [msg_ids[2]]


def test_set_vt_batch_rejects_unequal_lengths(conn: Conn) -> None:
    define_flow(conn, "vt_mismatch", [map_step("each")])
    run = start_flow(conn, "vt_mismatch", [1, 2])
    msg_ids = [t["message_id"] for t in tasks(conn, run["run_id"])]
    expect_error(
        conn,
        "select * from pgflow.set_vt_batch('vt_mismatch', %s::bigint[], %s::int[])",
        (msg_ids, [5]),
        "msg_ids",
        "vt_offsets",
    )
    for msg_id in msg_ids:
        assert seconds_until_visible(conn, "vt_mismatch", msg_id) <= 0.5
