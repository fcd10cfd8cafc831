"""Contract section 7: prune_data_older_than deletes old finished data and keeps the rest."""

from __future__ import annotations

import uuid

from contract_helpers import (
    Conn,
    archived_ids,
    complete_task,
    define_flow,
    fail_task,
    get_run,
    read_and_start,
    register_worker,
    scalar,
    single,
    start_flow,
    start_tasks,
    task,
)

DAYS_AGO = 30


def _age_run(conn: Conn, run_id: uuid.UUID, flow_slug: str) -> None:
    """Shift every timestamp of a run (and its archived messages) DAYS_AGO days back."""
    shift = f"interval '{DAYS_AGO} days'"
    conn.execute(
        f"update pgflow.runs set started_at = started_at - {shift},"
        f" completed_at = completed_at - {shift}, failed_at = failed_at - {shift}"
        " where run_id = %s",
        (run_id,),
    )
    conn.execute(
        f"update pgflow.step_states set created_at = created_at - {shift},"
        f" started_at = started_at - {shift}, completed_at = completed_at - {shift},"
        f" failed_at = failed_at - {shift}, skipped_at = skipped_at - {shift}"
        " where run_id = %s",
        (run_id,),
    )
    conn.execute(
        f"update pgflow.step_tasks set queued_at = queued_at - {shift},"
        f" started_at = started_at - {shift}, completed_at = completed_at - {shift},"
        f" failed_at = failed_at - {shift} where run_id = %s",
        (run_id,),
    )
    conn.execute(
        f"update pgmq.a_{flow_slug} set archived_at = archived_at - {shift},"
        f" enqueued_at = enqueued_at - {shift} where message->>'run_id' = %s",
        (str(run_id),),
    )


def _finish(conn: Conn, flow: str, worker: uuid.UUID, *, fail: bool) -> uuid.UUID:
    run = start_flow(conn, flow, {})
    msg_id = task(conn, run["run_id"], "a")["message_id"]
    start_tasks(conn, flow, [msg_id], worker)
    if fail:
        fail_task(conn, run["run_id"], "a", 0, "fatal")
    else:
        complete_task(conn, run["run_id"], "a", 0, "ok")
    run_id: uuid.UUID = run["run_id"]
    return run_id


def _count(conn: Conn, table: str, run_id: uuid.UUID) -> int:
    return int(scalar(conn, f"select count(*) from pgflow.{table} where run_id = %s", (run_id,)))


def _prune(conn: Conn, interval: str = "7 days") -> None:
    conn.execute(
        "select pgflow.prune_data_older_than(retention_interval => %s::interval)", (interval,)
    )


def test_prune_deletes_old_finished_runs_with_states_and_tasks(conn: Conn) -> None:
    define_flow(conn, "prunable", [single("a", max_attempts=1)])
    worker = register_worker(conn, "prunable")
    old_completed = _finish(conn, "prunable", worker, fail=False)
    old_failed = _finish(conn, "prunable", worker, fail=True)
    recent_completed = _finish(conn, "prunable", worker, fail=False)
    recent_failed = _finish(conn, "prunable", worker, fail=True)
    old_started = start_flow(conn, "prunable", {})["run_id"]
    for run_id in (old_completed, old_failed, old_started):
        _age_run(conn, run_id, "prunable")

    _prune(conn)

    for gone in (old_completed, old_failed):
        for table in ("runs", "step_states", "step_tasks"):
            assert _count(conn, table, gone) == 0, f"{table} rows of old run {gone} remain"
    for kept in (recent_completed, recent_failed, old_started):
        for table in ("runs", "step_states", "step_tasks"):
            assert _count(conn, table, kept) == 1, f"{table} rows of run {kept} were deleted"
    assert get_run(conn, old_started)["status"] == "started"


def test_prune_deletes_old_archived_messages(conn: Conn) -> None:
    define_flow(conn, "prune_msgs", [single("a")])
    worker = register_worker(conn, "prune_msgs")
    old_run = _finish(conn, "prune_msgs", worker, fail=False)
    recent_run = _finish(conn, "prune_msgs", worker, fail=False)
    old_msg = task(conn, old_run, "a")["message_id"]
    recent_msg = task(conn, recent_run, "a")["message_id"]
    _age_run(conn, old_run, "prune_msgs")
    assert {old_msg, recent_msg} <= archived_ids(conn, "prune_msgs")

    _prune(conn)

    remaining = archived_ids(conn, "prune_msgs")
    assert old_msg not in remaining
    assert recent_msg in remaining


def test_prune_deletes_old_stopped_workers_only(conn: Conn) -> None:
    old_stopped = register_worker(conn, "w")
    recent_stopped = register_worker(conn, "w")
    running = register_worker(conn, "w")
    conn.execute(
        f"update pgflow.workers set started_at = now() - interval '{DAYS_AGO + 1} days',"
        f" last_heartbeat_at = now() - interval '{DAYS_AGO} days',"
        f" stopped_at = now() - interval '{DAYS_AGO} days' where worker_id = %s",
        (old_stopped,),
    )
    conn.execute("select pgflow.mark_worker_stopped(%s)", (recent_stopped,))
    conn.execute(
        f"update pgflow.workers set started_at = now() - interval '{DAYS_AGO} days'"
        " where worker_id = %s",
        (running,),
    )

    _prune(conn)

    remaining = {
        row_id for (row_id,) in conn.execute("select worker_id from pgflow.workers").fetchall()
    }
    assert old_stopped not in remaining
    assert {recent_stopped, running} <= remaining


def test_prune_keeps_everything_newer_than_interval(conn: Conn) -> None:
    define_flow(conn, "all_recent", [single("a")])
    worker = register_worker(conn, "all_recent")
    run_id = _finish(conn, "all_recent", worker, fail=False)
    _age_run(conn, run_id, "all_recent")
    _prune(conn, f"{DAYS_AGO + 5} days")
    assert _count(conn, "runs", run_id) == 1
    assert task(conn, run_id, "a")["message_id"] in archived_ids(conn, "all_recent")


def test_prune_with_tasks_claimed_by_pruned_worker(conn: Conn) -> None:
    define_flow(conn, "orphaned", [single("a"), single("b")])
    worker = register_worker(conn, "orphaned")
    run = start_flow(conn, "orphaned", {})
    read_and_start(conn, "orphaned", worker)
    conn.execute(
        "update pgflow.workers set last_heartbeat_at = now() - interval '60 days',"
        " started_at = now() - interval '60 days', stopped_at = now() - interval '60 days'"
        " where worker_id = %s",
        (worker,),
    )
    _prune(conn)
    # the run is still going; its tasks simply lose the worker reference
    assert get_run(conn, run["run_id"])["status"] == "started"
    assert task(conn, run["run_id"], "a")["status"] == "started"
