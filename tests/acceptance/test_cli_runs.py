"""Inspecting and cancelling runs from the command line: `pgflow runs list|show`,
`pgflow flows list|show` and `pgflow cancel`, against runs that real worker subprocesses
executed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    start_run,
    task_counts,
    wait_for_run,
    wait_for_started_tasks,
)

Run = Callable[..., subprocess.CompletedProcess[str]]
Conn = psycopg.Connection[Any]


@pytest.fixture
def workers(db_dsn: str, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(db_dsn, tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@dataclass
class Runs:
    completed: str
    failed: str
    waiting: str


@pytest.fixture
def runs(workers: WorkerPool, conn: Conn) -> Runs:
    """One completed, one failed and one still started run (of a flow no worker serves)."""
    worker = workers.start(
        ["acceptance_flows:basic", "acceptance_flows:failing"], "--concurrency", "2", conn=conn
    )
    completed = start_run(conn, "acc_basic", {"n": 4})
    assert wait_for_run(conn, completed, details=worker.describe) == ("completed", basic_output(4))
    failed = start_run(conn, "acc_failing", {})
    assert wait_for_run(conn, failed, details=worker.describe)[0] == "failed"
    conn.execute("select pgflow.create_flow('acc_idle')")
    conn.execute("select pgflow.add_step('acc_idle', 'only')")
    waiting = start_run(conn, "acc_idle", {})
    return Runs(completed=completed, failed=failed, waiting=waiting)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def listed(stdout: str) -> dict[str, list[str]]:
    """run_id -> the other columns of `pgflow runs list`."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines()[1:]:
        run_id, flow, status, *rest = line.split()
        rows[run_id] = [flow, status, " ".join(rest)]
    return rows


# -- runs list ------------------------------------------------------------------------------------


def test_runs_list_of_an_empty_database(db_dsn: str, run_pgflow: Run) -> None:
    assert ok(run_pgflow("runs", "list", "--dsn", db_dsn)).strip() == "no runs"


def test_runs_list_shows_every_run_newest_first(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    stdout = ok(run_pgflow("runs", "list", "--dsn", db_dsn))
    assert stdout.splitlines()[0].split() == ["run_id", "flow", "status", "started", "duration"]
    rows = listed(stdout)
    assert list(rows) == [runs.waiting, runs.failed, runs.completed]
    assert rows[runs.completed][:2] == ["acc_basic", "completed"]
    assert rows[runs.failed][:2] == ["acc_failing", "failed"]
    assert rows[runs.waiting][:2] == ["acc_idle", "started"]
    assert rows[runs.waiting][2].endswith("running")
    assert re.search(r"\d+(\.\d+)? (ms|s)$", rows[runs.completed][2])


def test_runs_list_filters(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    by_status = listed(ok(run_pgflow("runs", "list", "--status", "failed", "--dsn", db_dsn)))
    assert list(by_status) == [runs.failed]
    by_flow = listed(ok(run_pgflow("runs", "list", "--flow", "acc_basic", "--dsn", db_dsn)))
    assert list(by_flow) == [runs.completed]
    newest = listed(ok(run_pgflow("runs", "list", "--limit", "1", "--dsn", db_dsn)))
    assert list(newest) == [runs.waiting]
    assert run_pgflow("runs", "list", "--status", "bogus", "--dsn", db_dsn).returncode == 2


# -- runs show ------------------------------------------------------------------------------------


# an attempt: task, attempt, outcome, start -> end, duration, worker (and the error)
ATTEMPT = r"task 0  attempt {n}  {outcome}  {clock} -> {clock}  \S+ m?s  worker [0-9a-f]{{8}}"
CLOCK = r"\d\d:\d\d:\d\d\.\d\d\d"


def attempt_line(n: int, outcome: str) -> str:
    return ATTEMPT.format(n=n, outcome=outcome, clock=CLOCK)


def test_runs_show_draws_the_steps_as_a_tree(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    lines = ok(run_pgflow("runs", "show", runs.completed, "--dsn", db_dsn)).splitlines()
    assert re.fullmatch(
        rf"run {runs.completed}  flow acc_basic  completed  \d+(\.\d+)? m?s", lines[0]
    ), lines
    assert re.fullmatch(
        r"└─ double  \[single\]  completed  tasks 1/1  attempts 1  \S+ m?s", lines[1]
    ), lines
    assert re.fullmatch("      " + attempt_line(1, "completed"), lines[2]), lines
    assert re.fullmatch(
        r"   └─ add_one  \[single\]  completed  tasks 1/1  attempts 1  \S+ m?s", lines[3]
    ), lines
    assert re.fullmatch("         " + attempt_line(1, "completed"), lines[4]), lines
    assert len(lines) == 5


def test_runs_show_reports_errors_and_attempts(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    lines = ok(run_pgflow("runs", "show", runs.failed, "--dsn", db_dsn)).splitlines()
    assert lines[0].startswith(f"run {runs.failed}  flow acc_failing  failed  ")
    assert lines[1].startswith("error: ") and FAILURE_TEXT in lines[1]
    assert re.fullmatch(r"└─ explode  \[single\]  failed  tasks 1/1  attempts 2  .*", lines[2])
    details = [d.strip() for d in lines[3:]]
    assert details[0].startswith("error: ") and FAILURE_TEXT in details[0], lines
    # every attempt, with its error; the tracebacks only when asked for
    assert len(details) == 3, lines
    for n, detail in enumerate(details[1:], start=1):
        assert re.fullmatch(
            attempt_line(n, "failed") + re.escape(f": ValueError: {FAILURE_TEXT}"), detail
        ), lines
    assert "Traceback" not in "\n".join(lines)


def test_runs_show_tracebacks(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    shown = ok(run_pgflow("runs", "show", runs.failed, "--tracebacks", "--dsn", db_dsn))
    lines = shown.splitlines()
    attempts = [i for i, line in enumerate(lines) if re.search(attempt_line(1, "failed"), line)]
    assert len(attempts) == 1, lines
    # the traceback follows its attempt, indented under it, and ends with the error
    following = lines[attempts[0] + 1 :]
    assert following[0].strip() == "Traceback (most recent call last):", lines
    assert following[0].startswith("        ")
    end = next(i for i, line in enumerate(following) if line.strip().startswith("ValueError"))
    assert any("in explode" in line for line in following[:end]), lines
    assert following[end].strip() == f"ValueError: {FAILURE_TEXT}"
    assert shown.count("Traceback (most recent call last):") == 2  # one per failed attempt


def test_runs_show_of_a_started_run(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    lines = ok(run_pgflow("runs", "show", runs.waiting, "--dsn", db_dsn)).splitlines()
    assert lines[0] == f"run {runs.waiting}  flow acc_idle  started  running"
    assert re.fullmatch(r"└─ only  \[single\]  started  tasks 0/1  attempts 0  running", lines[1])


def test_runs_show_json(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    shown = json.loads(ok(run_pgflow("runs", "show", runs.failed, "--json", "--dsn", db_dsn)))
    assert shown["run_id"] == runs.failed
    assert shown["status"] == "failed"
    assert FAILURE_TEXT in shown["error_message"]
    (step,) = shown["steps"]
    assert (step["step_slug"], step["status"]) == ("explode", "failed")
    (task,) = step["tasks"]
    assert (task["status"], task["attempts_count"]) == ("failed", 2)
    attempts = shown["attempts"]
    assert [(a["step_slug"], a["attempt"], a["outcome"]) for a in attempts] == [
        ("explode", 1, "failed"),
        ("explode", 2, "failed"),
    ]
    assert all("in explode" in a["traceback"] for a in attempts)

    done = json.loads(ok(run_pgflow("runs", "show", runs.completed, "--json", "--dsn", db_dsn)))
    assert done["output"] == basic_output(4)
    assert [s["step_slug"] for s in done["steps"]] == ["double", "add_one"]


def test_runs_show_of_an_unknown_run_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    line = assert_one_error_line(run_pgflow("runs", "show", missing, "--dsn", db_dsn))
    assert f"run {missing} does not exist" in line
    line = assert_one_error_line(run_pgflow("runs", "show", "not-a-run-id", "--dsn", db_dsn))
    assert "not-a-run-id" in line


# -- flows ----------------------------------------------------------------------------------------


def test_flows_list_of_an_empty_database(db_dsn: str, run_pgflow: Run) -> None:
    stdout = ok(run_pgflow("flows", "list", "--dsn", db_dsn))
    assert stdout.startswith("no flows")


def test_flows_list_and_show(runs: Runs, db_dsn: str, run_pgflow: Run) -> None:
    lines = ok(run_pgflow("flows", "list", "--dsn", db_dsn)).splitlines()
    assert lines[0].split() == ["flow", "steps", "runs", "created"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {"acc_basic": ["2", "1"], "acc_failing": ["1", "1"], "acc_idle": ["1", "1"]}

    shown = ok(run_pgflow("flows", "show", "acc_basic", "--dsn", db_dsn)).splitlines()
    assert shown == [
        "flow acc_basic: max_attempts 2, base_delay 1s, timeout 30s",
        "  double [single]  attempts 2, base_delay 1s, timeout 30s",
        "  add_one [single] after double  attempts 2, base_delay 1s, timeout 10s",
    ]


def test_flows_show_of_an_unknown_flow_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    line = assert_one_error_line(run_pgflow("flows", "show", "no_such_flow", "--dsn", db_dsn))
    assert "'no_such_flow' does not exist" in line
    assert "pgflow flows list" in line


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_a_started_run_and_ignore_its_late_results(
    workers: WorkerPool, conn: Conn, db_dsn: str, run_pgflow: Run, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = workers.start(
        ["acceptance_flows:gated"], "--concurrency", "2", "--prefetch", "0", conn=conn
    )
    run_id = start_run(conn, "acc_gated", gated_input(gate, 4))
    wait_for_started_tasks(conn, run_id, 2, details=worker.describe)

    assert ok(run_pgflow("cancel", run_id, "--dsn", db_dsn)).strip() == f"run {run_id} cancelled"
    assert task_counts(conn, run_id) == {"cancelled": 4}

    # The two handlers still running now finish; their results reach the database before those
    # of the next run, which can only be claimed once their slots are free.
    gate.touch()
    after = run_pgflow(
        "start",
        "acc_gated",
        "--input",
        json.dumps(gated_input(gate, 2)),
        "--wait",
        "--timeout",
        "60",
        "--dsn",
        db_dsn,
    )
    assert after.returncode == 0, after.stderr + worker.describe()
    assert json.loads(after.stdout) == gated_output(2)

    run = conn.execute(
        "select status, output, cancelled_at is not null, completed_at from pgflow.runs "
        "where run_id = %s",
        (run_id,),
    ).fetchone()
    assert run == ("cancelled", None, True, None)
    tasks = conn.execute(
        "select distinct status, output, completed_at from pgflow.step_tasks where run_id = %s",
        (run_id,),
    ).fetchall()
    assert tasks == [("cancelled", None, None)]
    # the two running attempts ended with the run; the late results added nothing
    attempts = conn.execute(
        "select outcome, error_message, count(*) from pgflow.task_attempts where run_id = %s"
        " group by 1, 2",
        (run_id,),
    ).fetchall()
    assert attempts == [("cancelled", "the run was cancelled", 2)]
    assert worker.alive(), worker.describe()

    listed_runs = listed(ok(run_pgflow("runs", "list", "--status", "cancelled", "--dsn", db_dsn)))
    assert list(listed_runs) == [run_id]


def test_cancel_an_unknown_run_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    line = assert_one_error_line(run_pgflow("cancel", missing, "--dsn", db_dsn))
    assert missing in line
    assert "does not exist" in line


def test_cancelling_a_finished_run_changes_nothing(
    runs: Runs, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    said = ok(run_pgflow("cancel", runs.completed, "--dsn", db_dsn)).strip()
    assert said == f"run {runs.completed} had already finished (completed); nothing to cancel"
    assert conn.execute(
        "select status, cancelled_at from pgflow.runs where run_id = %s", (runs.completed,)
    ).fetchone() == ("completed", None)


def test_cancelling_a_cancelled_run_says_there_is_nothing_to_cancel(
    runs: Runs, db_dsn: str, run_pgflow: Run
) -> None:
    ok(run_pgflow("cancel", runs.waiting, "--dsn", db_dsn))
    again = ok(run_pgflow("cancel", runs.waiting, "--dsn", db_dsn)).strip()
    assert again == f"run {runs.waiting} had already finished (cancelled); nothing to cancel"


# -- run ids --------------------------------------------------------------------------------------


@pytest.fixture
def idle_flow(conn: Conn) -> str:
    """A flow no worker serves: its runs stay started."""
    conn.execute("select pgflow.create_flow('acc_ids')")
    conn.execute("select pgflow.add_step('acc_ids', 'only')")
    return "acc_ids"


def test_runs_show_and_cancel_take_a_unique_prefix(
    idle_flow: str, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    run_id = start_run(conn, idle_flow, {})
    shown = ok(run_pgflow("runs", "show", run_id[:8], "--dsn", db_dsn)).splitlines()
    assert shown[0] == f"run {run_id}  flow acc_ids  started  running"
    said = ok(run_pgflow("cancel", run_id[:8].upper(), "--dsn", db_dsn)).strip()
    assert said == f"run {run_id} cancelled"


def test_an_ambiguous_prefix_lists_candidates(
    idle_flow: str, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    twins = [f"abcdef01-0000-4000-8000-00000000000{n}" for n in (1, 2)]
    for run_id in twins:
        conn.execute("select pgflow.start_flow('acc_ids', '{}'::jsonb, %s)", (run_id,))
    for command in (("runs", "show"), ("cancel",)):
        line = assert_one_error_line(run_pgflow(*command, "abcdef", "--dsn", db_dsn))
        assert line == (
            f"error: run id prefix 'abcdef' is ambiguous: {twins[0]}, {twins[1]} start with it; "
            "give more of the id"
        )
    assert task_counts(conn, twins[0]) == {"queued": 1}  # nothing was cancelled


def test_a_malformed_run_id_is_one_error_line(db_dsn: str, run_pgflow: Run) -> None:
    for command in (("runs", "show"), ("cancel",)):
        line = assert_one_error_line(run_pgflow(*command, "xyz", "--dsn", db_dsn))
        assert line.startswith("error: 'xyz' is not a run id nor the start of one"), line
        line = assert_one_error_line(run_pgflow(*command, "abc", "--dsn", db_dsn))
        assert line == "error: no run id starts with 'abc'"


def test_start_with_a_run_id_twice_is_idempotent(
    idle_flow: str, conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    run_id = "22222222-0000-4000-8000-000000000000"
    start = ("start", idle_flow, "--run-id", run_id, "--dsn", db_dsn)
    assert ok(run_pgflow(*start, "--input", '{"a": 1}')).strip() == run_id
    again = run_pgflow(*start, "--input", '{"a": 1}')
    assert ok(again).strip() == run_id
    assert f"run {run_id} had already been started with this input" in again.stderr
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (1,)

    line = assert_one_error_line(run_pgflow(*start, "--input", '{"a": 2}'))
    assert line == (
        f"error: run {run_id} already exists with another input; give another run id, or none "
        "for a new one"
    )
    line = assert_one_error_line(
        run_pgflow("start", idle_flow, "--run-id", "nope", "--dsn", db_dsn)
    )
    assert "'nope' is not a UUID" in line


def test_runs_show_gives_every_step_of_a_finished_run_a_final_state(
    conn: Conn, db_dsn: str, run_pgflow: Run
) -> None:
    # first -> (then, each); maybe is skipped at once: its condition on the input is unmet
    conn.execute("select pgflow.create_flow('acc_final')")
    conn.execute("select pgflow.add_step('acc_final', 'first')")
    conn.execute("select pgflow.add_step('acc_final', 'then', array['first'])")
    conn.execute("select pgflow.add_step('acc_final', 'each', array['first'], step_type => 'map')")
    conn.execute(
        "select pgflow.add_step('acc_final', 'maybe', "
        """required_input_pattern => '{"go": true}'::jsonb)"""
    )
    run_id = start_run(conn, "acc_final", {"go": False})
    assert ok(run_pgflow("cancel", run_id, "--dsn", db_dsn)).strip() == f"run {run_id} cancelled"

    lines = ok(run_pgflow("runs", "show", run_id, "--dsn", db_dsn)).splitlines()
    assert re.fullmatch(rf"run {run_id}  flow acc_final  cancelled  \S+ m?s", lines[0]), lines
    assert lines[1] == "error: Run cancelled"
    assert re.fullmatch(
        r"├─ first  \[single\]  stopped \(run cancelled\)  tasks 1/1  attempts 0  \S+ m?s",
        lines[2],
    ), lines
    assert lines[3:] == [
        "│     tasks: 1 cancelled",
        "│  ├─ then  [single]  not started (run cancelled)  tasks 0/1  attempts 0  -",
        "│  └─ each  [map]  not started (run cancelled)  tasks -  attempts 0  -",
        "└─ maybe  [single]  skipped  tasks -  attempts 0  -",
        "      skipped: condition_unmet",
    ], lines
    assert "running" not in "\n".join(lines)
