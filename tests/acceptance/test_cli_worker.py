"""`pgflow worker` and `pgflow start` as a user runs them: real subprocesses against a real
database, including the ways a worker can die or lose its database in the middle of a run.

Every worker subprocess is started through the `workers` fixture, which kills whatever is still
running when the test ends. Waits poll the database (or the worker's log) with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import (
    FAILURE_TEXT,
    WorkerPool,
    basic_output,
    gated_input,
    gated_output,
    run_row,
    start_run,
    subprocess_env,
    task_counts,
    wait_for_run,
    wait_for_started_tasks,
    wait_until,
)

Run = Callable[..., subprocess.CompletedProcess[str]]
Conn = psycopg.Connection[Any]

BASIC = "acceptance_flows:basic"
FAILING = "acceptance_flows:failing"
MANY = "acceptance_flows:many"
GATED = "acceptance_flows:gated"
RECORDED = "acceptance_flows:recorded"
# These tests count the tasks a worker has started as the ones it runs: no claims held ahead
# of free slots (prefetch has tests of its own, tests/integration/test_prefetch.py and the
# SIGTERM test below).
NO_PREFETCH = ("--prefetch", "0")


@pytest.fixture
def workers(db_dsn: str, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(db_dsn, tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- start --wait -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [(), ("--executor", "process"), ("--executor", "asyncio"), ("--per-task",)],
    ids=["thread", "process", "asyncio", "per-task"],
)
def test_start_wait_prints_the_output(
    options: tuple[str, ...], workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    worker = workers.start([BASIC], *options, conn=conn)
    result = run_pgflow(
        "start", "acc_basic", "--input", '{"n": 20}', "--wait", "--timeout", "60", "--dsn", db_dsn
    )
    assert result.returncode == 0, result.stderr + worker.describe()
    assert json.loads(result.stdout) == basic_output(20)
    assert error_lines(result.stderr) == []
    started = re.match(r"run (\S+) started$", result.stderr.splitlines()[0])
    assert started is not None, result.stderr
    run_id = started.group(1)
    assert conn.execute(
        "select status, attempts_count from pgflow.step_tasks where run_id = %s order by step_slug",
        (run_id,),
    ).fetchall() == [("completed", 1), ("completed", 1)]


def test_start_without_wait_prints_the_run_id(
    workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    workers.start([BASIC], conn=conn)
    result = run_pgflow("start", "acc_basic", "--input", '{"n": 1}', "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert wait_for_run(conn, run_id) == ("completed", basic_output(1))


def test_a_failing_run_makes_start_wait_exit_1(
    workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    workers.start([FAILING], conn=conn)
    result = run_pgflow("start", "acc_failing", "--input", "{}", "--wait", "--dsn", db_dsn)
    line = assert_one_error_line(result)
    assert "acc_failing" in line
    assert "failed" in line
    assert FAILURE_TEXT in line
    assert result.stdout == ""
    (attempts,) = conn.execute(
        "select attempts_count from pgflow.step_tasks where flow_slug = 'acc_failing'"
    ).fetchone() or (None,)
    assert attempts == 2  # the flow allows two attempts; both were made


def test_start_wait_timeout_is_one_error_line(db_dsn: str, conn: Conn, run_pgflow: Run) -> None:
    # the flow exists but no worker serves it
    conn.execute("select pgflow.create_flow('acc_idle')")
    conn.execute("select pgflow.add_step('acc_idle', 'only')")
    result = run_pgflow("start", "acc_idle", "--wait", "--timeout", "0.5", "--dsn", db_dsn)
    line = assert_one_error_line(result)
    assert "did not finish within 0.5s" in line
    (status,) = conn.execute("select status from pgflow.runs").fetchone() or (None,)
    assert status == "started"
    # it said why, and how to fix it, and went on waiting until the timeout
    warnings = [w for w in result.stderr.splitlines() if w.startswith("warning: ")]
    assert warnings == [
        "warning: no live worker serves flow 'acc_idle' (none has sent a heartbeat in the last "
        "15 s): the run waits until one does; start one with `pgflow worker <module>:<flow>` "
        "for the module that defines 'acc_idle'"
    ], result.stderr


def test_start_wait_says_nothing_of_workers_while_one_is_live(
    db_dsn: str, conn: Conn, run_pgflow: Run
) -> None:
    conn.execute("select pgflow.create_flow('acc_idle')")
    conn.execute("select pgflow.add_step('acc_idle', 'only')")
    conn.execute(
        "select pgflow.register_worker(gen_random_uuid(), 'acc_idle', 'elsewhere:1')"
    )  # a worker row as a live worker keeps it, without the worker
    result = run_pgflow("start", "acc_idle", "--wait", "--timeout", "0.5", "--dsn", db_dsn)
    assert "did not finish within 0.5s" in assert_one_error_line(result)
    assert "warning" not in result.stderr


# -- several workers ----------------------------------------------------------------------------


def test_two_workers_share_one_run_and_run_each_task_once(workers: WorkerPool, conn: Conn) -> None:
    first = workers.start([MANY], "--concurrency", "4", conn=conn)
    second = workers.start([MANY], "--concurrency", "4", "--per-task", conn=conn)
    items = list(range(300))
    run_id = start_run(conn, "acc_many", items)

    def details() -> str:
        return first.describe() + "\n" + second.describe()

    status, output = wait_for_run(conn, run_id, timeout=120, details=details)
    assert (status, output) == ("completed", {"times_three": [i * 3 for i in items]})
    rows = conn.execute(
        "select task_index, status, attempts_count, requeued_count, last_worker_id::text "
        "from pgflow.step_tasks where run_id = %s order by task_index",
        (run_id,),
    ).fetchall()
    assert [r[0] for r in rows] == items
    assert {(r[1], r[2], r[3]) for r in rows} == {("completed", 1, 0)}
    used = {r[4] for r in rows}
    assert used == set(first.worker_ids(conn)) | set(second.worker_ids(conn))
    # one message per task, each archived once: nothing was delivered twice
    (archived,) = conn.execute("select count(*) from pgmq.a_acc_many").fetchone() or (0,)
    (left,) = conn.execute("select count(*) from pgmq.q_acc_many").fetchone() or (0,)
    assert (archived, left) == (300, 0)


# -- failures in the middle of a run --------------------------------------------------------------


def test_a_killed_worker_s_tasks_are_requeued_and_finished_by_another(
    workers: WorkerPool, conn: Conn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    doomed = workers.start([GATED], *NO_PREFETCH, "--concurrency", "3", conn=conn)
    run_id = start_run(conn, "acc_gated", gated_input(gate, 6))
    stalled = wait_for_started_tasks(conn, run_id, 3, details=doomed.describe)
    doomed_ids = doomed.worker_ids(conn)

    doomed.send(signal.SIGKILL)
    assert doomed.wait_exit(30) == -signal.SIGKILL
    # killed outright: it could not mark itself stopped
    assert conn.execute(
        "select stopped_at from pgflow.workers where worker_id = %s", (doomed_ids[0],)
    ).fetchall() == [(None,)]
    assert task_counts(conn, run_id) == {"started": 3, "queued": 3}

    # the tasks now look as if they had been started long ago, past timeout + 30 s
    conn.execute(
        "update pgflow.step_tasks set started_at = now() - interval '10 minutes', "
        "queued_at = now() - interval '11 minutes' where run_id = %s and status = 'started'",
        (run_id,),
    )
    gate.touch()
    rescuer = workers.start([GATED], *NO_PREFETCH, "--concurrency", "3", conn=conn)
    status, output = wait_for_run(conn, run_id, details=rescuer.describe)
    assert (status, output) == ("completed", gated_output(6))

    rows = conn.execute(
        "select task_index, attempts_count, requeued_count, last_worker_id::text "
        "from pgflow.step_tasks where run_id = %s order by task_index",
        (run_id,),
    ).fetchall()
    (rescuer_id,) = rescuer.worker_ids(conn)
    for index, attempts, requeued, last_worker in rows:
        expected = (2, 1) if index in stalled else (1, 0)
        assert (attempts, requeued) == expected, rows
        assert last_worker == rescuer_id
    assert "requeued 3 stalled task(s)" in rescuer.log()


def test_worker_reconnects_after_its_connections_are_terminated(
    workers: WorkerPool, conn: Conn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = workers.start([GATED], *NO_PREFETCH, "--concurrency", "2", conn=conn)
    # a first run through an open gate, so the reporter's connection is open too
    open_gate = tmp_path / "open"
    open_gate.touch()
    warm_up = start_run(conn, "acc_gated", gated_input(open_gate, 1))
    assert wait_for_run(conn, warm_up, details=worker.describe)[0] == "completed"

    run_id = start_run(conn, "acc_gated", gated_input(gate, 5))
    wait_for_started_tasks(conn, run_id, 2, details=worker.describe)

    def worker_backends() -> set[int]:
        rows = conn.execute(
            "select pid from pg_stat_activity where datname = current_database() "
            "and application_name = 'pgflow' and pid <> pg_backend_pid()"
        ).fetchall()
        return {int(r[0]) for r in rows}

    old = wait_until(
        lambda: worker_backends() if len(worker_backends()) >= 3 else None,
        timeout=30,
        what="the worker's connections (loop, reporter, listener)",
        details=worker.describe,
    )
    terminated = conn.execute(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity "
        "where pid = any(%s)",
        (list(old),),
    ).fetchone()
    assert terminated == (len(old),)
    wait_until(
        lambda: worker_backends() - old,
        timeout=30,
        what="the worker to open new connections",
        details=worker.describe,
    )

    gate.touch()  # the in-flight tasks finish and must be reported on new connections
    status, output = wait_for_run(conn, run_id, details=worker.describe)
    assert (status, output) == ("completed", gated_output(5))
    attempts = conn.execute(
        "select distinct attempts_count from pgflow.step_tasks where run_id = %s", (run_id,)
    ).fetchall()
    assert attempts == [(1,)]  # no result was lost, so nothing ran twice
    assert worker.alive(), worker.describe()
    # each connection says it was lost and that it is back
    for message in (
        "database connection lost",
        "database connection restored",
        "listener lost its connection",
        "listener reconnected",
        "could not report",
        "reporter reconnected; reported",
    ):
        worker.wait_for_log(message)

    worker.send(signal.SIGTERM)
    assert worker.wait_exit(60) == 0, worker.describe()
    assert_timestamped(worker.log())


# local time with its UTC offset, to the millisecond, then the level
TIMESTAMPED = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S"
)


def assert_timestamped(log: str) -> None:
    lines = log.splitlines()
    assert lines, "the worker logged nothing"
    untimed = [line for line in lines if not TIMESTAMPED.match(line)]
    assert not untimed, log


def test_sigterm_finishes_in_flight_tasks_then_exits_0(
    workers: WorkerPool, conn: Conn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = workers.start(
        [GATED], *NO_PREFETCH, "--concurrency", "2", "--shutdown-grace", "120", conn=conn
    )
    (worker_id,) = worker.worker_ids(conn)
    run_id = start_run(conn, "acc_gated", gated_input(gate, 4))
    in_flight = wait_for_started_tasks(conn, run_id, 2, details=worker.describe)

    worker.send(signal.SIGTERM)
    worker.wait_for_log("received SIGTERM")
    gate.touch()
    assert worker.wait_exit(60) == 0, worker.describe()
    assert_timestamped(worker.log())

    rows = conn.execute(
        "select task_index, status, output, attempts_count from pgflow.step_tasks "
        "where run_id = %s order by task_index",
        (run_id,),
    ).fetchall()
    finished = [(i, s, o) for i, s, o, _ in rows if i in in_flight]
    assert finished == [(i, "completed", i * 10) for i in in_flight]
    # nothing new was claimed after the signal
    untouched = [(s, a) for i, s, _, a in rows if i not in in_flight]
    assert untouched == [("queued", 0), ("queued", 0)]
    (stopped_at,) = conn.execute(
        "select stopped_at from pgflow.workers where worker_id = %s", (worker_id,)
    ).fetchone() or (None,)
    assert stopped_at is not None
    assert run_row(conn, run_id) == ("started", None)


@pytest.mark.parametrize("executor", ["thread", "process", "asyncio", "inline"])
def test_sigterm_mid_batch_loses_no_task_and_runs_none_twice(
    executor: str, workers: WorkerPool, conn: Conn, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    count = 300
    first = workers.start([RECORDED], "--executor", executor, "--concurrency", "4", conn=conn)
    run_id = start_run(conn, "acc_recorded", [{"i": i, "log": str(log)} for i in range(count)])
    # stop it in the middle of the run, with tasks running and more waiting
    wait_until(
        lambda: task_counts(conn, run_id).get("completed", 0) >= 30,
        timeout=60,
        what="30 completed tasks",
        details=first.describe,
    )
    first.send(signal.SIGTERM)
    assert first.wait_exit(60) == 0, first.describe()
    left = task_counts(conn, run_id)
    assert left.get("completed", 0) < count, "the run finished before the signal: no test"
    assert set(left) <= {"completed", "queued"}, left  # nothing left started: all given back

    workers.start([RECORDED], "--executor", executor, "--concurrency", "4", conn=conn)
    status, output = wait_for_run(conn, run_id, timeout=120)
    assert status == "completed"
    assert output == {"record": list(range(count))}
    ran = sorted(int(line) for line in log.read_text().split())
    assert ran == list(range(count)), "a task ran twice or not at all"
    attempts = conn.execute(
        "select count(*) filter (where attempts_count <> 1) from pgflow.step_tasks "
        "where run_id = %s",
        (run_id,),
    ).fetchone()
    assert attempts == (0,)


def test_a_second_sigterm_exits_at_once(workers: WorkerPool, conn: Conn, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never opened: only the second signal can end the worker
    worker = workers.start(
        [GATED], *NO_PREFETCH, "--concurrency", "2", "--shutdown-grace", "600", conn=conn
    )
    run_id = start_run(conn, "acc_gated", gated_input(gate, 2))
    wait_for_started_tasks(conn, run_id, 2, details=worker.describe)

    worker.send(signal.SIGTERM)
    worker.wait_for_log("received SIGTERM")
    worker.send(signal.SIGTERM)
    # far less than the grace period and than the handlers' own wait for the gate
    assert worker.wait_exit(30) == 130, worker.describe()
    assert "exiting now" in worker.log()
    assert task_counts(conn, run_id) == {"started": 2}


# -- pgflow workers -------------------------------------------------------------------------------


def listed_workers(stdout: str) -> dict[str, tuple[str, str, str]]:
    """worker_id -> (flow, where, state) of `pgflow workers`."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        flow, worker_id, where, *rest = line.split()
        state = " ".join(rest).split(" ago ")[1]
        rows[worker_id] = (flow, where, state)
    return rows


def test_workers_lists_live_stopped_and_presumed_dead_workers(
    workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    assert run_pgflow("workers", "--dsn", db_dsn).stdout.strip() == "no workers"
    killed = workers.start([BASIC], conn=conn)
    stopped = workers.start([FAILING], conn=conn)
    live = workers.start([BASIC, FAILING], conn=conn)
    stopped.send(signal.SIGTERM)
    assert stopped.wait_exit(60) == 0, stopped.describe()
    killed.send(signal.SIGKILL)
    killed.wait_exit(30)
    (killed_id,) = killed.worker_ids(conn)

    # killed a moment ago: nothing tells it from a live one yet
    result = run_pgflow("workers", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert listed_workers(result.stdout)[killed_id][2] == "live"

    # as if it had missed three heartbeats (15 s) without waiting for them
    conn.execute(
        "update pgflow.workers set last_heartbeat_at = now() - interval '16 seconds' "
        "where worker_id = %s",
        (killed_id,),
    )
    result = run_pgflow("workers", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["flow", "worker_id", "where", "last", "heartbeat", "state"]
    rows = listed_workers(result.stdout)
    assert rows[killed_id] == ("acc_basic", killed.function_name, "presumed dead")
    assert re.search(r" (1[6-9]|[2-5]\d) s ago +presumed dead$", lines[-1]), lines
    (stopped_id,) = stopped.worker_ids(conn)
    assert rows[stopped_id] == ("acc_failing", stopped.function_name, "stopped")
    live_ids = live.worker_ids(conn)
    assert [rows[i] for i in live_ids] == [
        ("acc_basic", live.function_name, "live"),
        ("acc_failing", live.function_name, "live"),
    ]
    # newest first: the live worker's two rows, then the stopped one, then the killed one
    assert list(rows)[2:] == [stopped_id, killed_id]
    assert set(list(rows)[:2]) == set(live_ids)

    only = listed_workers(run_pgflow("workers", "--flow", "acc_failing", "--dsn", db_dsn).stdout)
    assert set(only) == {stopped_id, live_ids[1]}
    assert len(listed_workers(run_pgflow("workers", "--limit", "1", "--dsn", db_dsn).stdout)) == 1
    assert run_pgflow("workers", "--limit", "0", "--dsn", db_dsn).returncode == 2


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_flow_module_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    line = assert_one_error_line(
        run_pgflow("worker", "no_such_module_for_pgflow:flow", "--dsn", db_dsn)
    )
    assert "no_such_module_for_pgflow" in line
    assert "was not found" in line


def test_debug_shows_the_traceback(db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("--debug", "worker", "no_such_module_for_pgflow:flow", "--dsn", db_dsn)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "FlowLoadError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot load flow")


def test_a_reference_to_something_else_than_a_flow_is_one_error_line(
    db_dsn: str, run_pgflow: Run
) -> None:
    result = run_pgflow(
        "worker", "acceptance_flows:not_a_flow", "--dsn", db_dsn, env=_flows_importable()
    )
    line = assert_one_error_line(result)
    assert "not a pgflow Flow" in line


def test_a_flow_without_steps_is_one_error_line(db_dsn: str, conn: Conn, run_pgflow: Run) -> None:
    no_steps = "error: flow 'acc_empty' has no steps: define at least one with @flow.step()"
    served = run_pgflow(
        "worker", "acceptance_flows:empty", "--dsn", db_dsn, env=_flows_importable()
    )
    assert assert_one_error_line(served).startswith(no_steps)
    conn.execute("select pgflow.create_flow('acc_empty')")  # as SQL allows
    assert assert_one_error_line(run_pgflow("start", "acc_empty", "--dsn", db_dsn)).startswith(
        no_steps
    )
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)


def test_start_by_reference_checks_a_typed_input_before_the_run_exists(
    conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    start = ("start", "acceptance_flows:typed", "--dsn", db_dsn)
    refused = run_pgflow(*start, "--input", '{"cents": "ten"}', env=_flows_importable())
    assert assert_one_error_line(refused) == (
        "error: step 'take' of flow 'acc_typed': the input does not match `Amount`: "
        "Expected `int`, got `str` - at `$.cents`"
    )
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)
    # a fitting input starts the run (and the flow is compiled from the reference)
    started = run_pgflow(*start, "--input", '{"cents": 10}', env=_flows_importable())
    assert started.returncode == 0, started.stderr
    assert run_row(conn, started.stdout.strip()) == ("started", None)
    # a bare slug cannot be checked: the run is created, and a worker would fail its task
    by_slug = run_pgflow("start", "acc_typed", "--input", '{"cents": "ten"}', "--dsn", db_dsn)
    assert by_slug.returncode == 0, by_slug.stderr


def test_a_changed_flow_is_refused_unless_data_loss_is_allowed(
    workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    first = workers.start([BASIC], conn=conn)
    first.send(signal.SIGTERM)
    assert first.wait_exit(60) == 0, first.describe()

    changed = "acceptance_flows:basic_changed"
    refused = run_pgflow("worker", changed, "--dsn", db_dsn, env=_flows_importable())
    line = assert_one_error_line(refused)
    assert "differs from the code" in line
    assert "--allow-data-loss" in line

    replaced = workers.start([changed], "--allow-data-loss", conn=conn)
    replaced.wait_for_log("was recompiled")
    steps = conn.execute(
        "select step_slug from pgflow.steps where flow_slug = 'acc_basic' order by step_index"
    ).fetchall()
    assert steps == [("double",)]


def test_invalid_input_json_is_a_usage_error(db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("start", "acc_basic", "--input", "{n: 1}", "--dsn", db_dsn)
    assert result.returncode == 2
    assert "--input is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_worker_options_are_usage_errors(db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("worker", BASIC, "--concurrency", "0", "--dsn", db_dsn)
    assert result.returncode == 2
    assert "must be 1 or more" in result.stderr
    assert run_pgflow("worker", "--dsn", db_dsn).returncode == 2  # no flow given


def test_starting_an_unknown_flow_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    line = assert_one_error_line(run_pgflow("start", "no_such_flow", "--dsn", db_dsn))
    assert "no_such_flow" in line


def _flows_importable() -> dict[str, str]:
    return {"PYTHONPATH": subprocess_env()["PYTHONPATH"]}
