"""`pgflow start`, `pgflow runs list|show` and `pgflow cancel`: runs from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from pgflow.cli.parser import (
    EXIT_ERROR,
    EXIT_OK,
    Subparsers,
    add_command,
    add_group,
    database,
    json_arg,
    positive_int,
)
from pgflow.cli.progress import StatusLine
from pgflow.cli.worker import import_from_cwd
from pgflow.client import Client, Run, StepState, TaskAttempt
from pgflow.db.workers import DEFAULT_HEARTBEAT_INTERVAL, no_worker_warning
from pgflow.errors import PgflowError, RunFailed
from pgflow.flow import Flow, load_flow

_RUN_ID_HELP = "the run's id, or a unique start of it (such as the 8 characters progress shows)"


def register(commands: Subparsers) -> None:
    register_start(commands)
    register_runs(commands)
    register_cancel(commands)


def register_start(commands: Subparsers) -> None:
    p = add_command(commands, "start", cmd_start, "Start a run of a flow.")
    p.add_argument(
        "flow",
        metavar="FLOW",
        help="the flow's slug, or its module:attr (as for `pgflow worker`): the input is then "
        "checked against a typed root step before the run is created",
    )
    p.add_argument(
        "--input", type=json_arg, default={}, metavar="JSON", help="the run input (default {})"
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="use this run id instead of a new one; if that run exists with the same flow and "
        "input, it is the run (nothing starts twice)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the run and print its output")
    p.add_argument(
        "--timeout", type=float, default=None, help="with --wait: give up after this many seconds"
    )


def cmd_start(args: argparse.Namespace) -> int:
    flow: Flow | str = args.flow
    if ":" in args.flow:  # a slug never has one
        import_from_cwd()
        flow = load_flow(args.flow)
    with Client(database(args)) as client:
        run_id = client.start(flow, args.input, args.run_id)
        if not args.wait:
            print(run_id)
            return EXIT_OK
        print(f"run {run_id} started", file=sys.stderr)
        return wait_with_progress(client, run_id, args.timeout)


def _progress_text(run: Run, started: float) -> str:
    steps_done = sum(1 for s in run.steps if s.status != "created" and s.status != "started")
    tasks_total = sum((s.initial_tasks or 0) for s in run.steps)
    tasks_done = sum(s.tasks_done for s in run.steps)
    return (
        f"run {run.run_id[:8]} {run.status}: steps {steps_done}/{len(run.steps)}, "
        f"tasks {tasks_done}/{tasks_total}, {time.monotonic() - started:.1f}s"
    )


def wait_with_progress(client: Client, run_id: str, timeout: float | None) -> int:
    line = StatusLine()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    served = True
    next_look = started  # for live workers: at once, then once per heartbeat interval
    while True:
        run = client.get(run_id)
        line.update(_progress_text(run, started))
        if run.finished:
            line.clear()
            break
        if time.monotonic() >= next_look:
            was_served, served = served, client.serving_workers(run.flow_slug) > 0
            if was_served and not served:  # said again only if workers come and go again
                line.clear()
                print(f"warning: {no_worker_warning(run.flow_slug)}", file=sys.stderr)
            next_look = time.monotonic() + DEFAULT_HEARTBEAT_INTERVAL
        if deadline is not None and time.monotonic() > deadline:
            line.clear()
            raise PgflowError(f"run {run_id} did not finish within {timeout:g}s (it goes on)")
        time.sleep(0.1)
    elapsed = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
    if run.status == "completed":
        print(json.dumps(run.output, indent=2, default=str))
        print(f"completed in {elapsed:.2f}s", file=sys.stderr)
        return EXIT_OK
    error = RunFailed(run)
    print(f"error: {error}", file=sys.stderr)
    return EXIT_ERROR


def register_runs(commands: Subparsers) -> None:
    runs = add_group(commands, "runs", "List and inspect runs.")
    p = add_command(runs, "list", cmd_runs_list, "The newest runs.")
    p.add_argument("--flow", default=None)
    p.add_argument(
        "--status", default=None, choices=["started", "completed", "failed", "cancelled"]
    )
    p.add_argument("--limit", type=positive_int, default=50)
    p = add_command(
        runs,
        "show",
        cmd_runs_show,
        "A run's steps as a tree, with status, attempts, timing and errors.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)
    p.add_argument(
        "--tracebacks",
        action="store_true",
        help="print the handler's traceback under each attempt that has one",
    )
    p.add_argument(
        "--all-attempts",
        action="store_true",
        help=f"list every attempt of every task (by default, in a step of more than "
        f"{ATTEMPTS_LISTED_TASKS} tasks, those that completed at their first attempt are counted "
        "rather than listed)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run as JSON, with its attempts and tracebacks",
    )


def cmd_runs_list(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        runs = client.runs(flow=args.flow, status=args.status, limit=args.limit)
    if not runs:
        print("no runs")
        return EXIT_OK
    # which schedule started a run, when one did (docs/schedules.md)
    scheduled = any(run.schedule for run in runs)
    print(
        f"{'run_id':<36}  {'flow':<20} {'status':<10} {'started':<19}  {'duration':<10}"
        + ("  schedule" if scheduled else "")
    )
    for run in runs:
        line = (
            f"{run.run_id:<36}  {run.flow_slug:<20} {run.status:<10} "
            f"{run.started_at:%Y-%m-%d %H:%M:%S}  {_duration(run.started_at, run.finished_at):<10}"
        )
        if run.schedule:
            tick = f" @ {run.scheduled_at:%Y-%m-%dT%H:%M:%SZ}" if run.scheduled_at else ""
            line += f"  {run.schedule}{tick}"
        print(line.rstrip())
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        run = client.get(client.find_run_id(args.run_id))
        attempts = client.attempts(run.run_id, tracebacks=args.tracebacks or args.json)
    if args.json:
        shown = {**asdict(run), "attempts": [asdict(a) for a in attempts]}
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    print(render_run(run, attempts, tracebacks=args.tracebacks, all_attempts=args.all_attempts))
    return EXIT_OK


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    if end is None:
        return "running"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render_run(
    run: Run,
    attempts: Sequence[TaskAttempt] = (),
    *,
    tracebacks: bool = False,
    all_attempts: bool = False,
) -> str:
    """The run's steps as a tree: each step under its first dependency. Once the run has
    finished, every step shows a final state: one the run left open says it never started or
    was stopped with the run, and its tasks are counted by status. Under each step, its tasks'
    attempts (see `_attempt_lines`), with their tracebacks when asked for."""
    by_step: dict[str, list[TaskAttempt]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_slug, []).append(attempt)
    lines = [
        f"run {run.run_id}  flow {run.flow_slug}  {run.status}  "
        f"{_duration(run.started_at, run.finished_at)}"
    ]
    if run.error_message:
        lines.append(f"error: {run.error_message}")
    children: dict[str | None, list[StepState]] = {}
    for step in run.steps:
        parent = step.dependencies[0] if step.dependencies else None
        children.setdefault(parent, []).append(step)

    def walk(parent: str | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, step in enumerate(kids):
            last = i == len(kids) - 1
            branch = "└─ " if last else "├─ "
            lines.append(prefix + branch + _step_line(run, step))
            detail_prefix = prefix + ("   " if last else "│  ")
            step_attempts = by_step.get(step.step_slug, [])
            details = _step_details(run, step, with_failed_tasks=not step_attempts)
            details += _attempt_lines(step_attempts, tracebacks, all_attempts)
            for detail in details:
                lines.append(detail_prefix + "   " + detail)
            walk(step.step_slug, detail_prefix)

    walk(None, "")
    return "\n".join(lines)


# what a step the run left open shows once the run has finished
_LEFT_OPEN = {"created": "not started", "started": "stopped"}


def _step_line(run: Run, step: StepState) -> str:
    left_open = run.finished and step.status in _LEFT_OPEN
    status = f"{_LEFT_OPEN[step.status]} (run {run.status})" if left_open else step.status
    if step.status == "skipped" and not step.tasks:
        tasks = "-"  # skipped before it had any
    elif step.initial_tasks is not None:
        tasks = f"{step.tasks_done}/{step.initial_tasks}"
    else:  # a map step whose array never came
        tasks = "-" if run.finished else "?"
    attempts = max((t.attempts_count for t in step.tasks), default=0)
    end = step.completed_at or step.failed_at or step.skipped_at
    if end is None and left_open:
        end = run.finished_at
    parts = [
        f"{step.step_slug}",
        f"[{step.step_type}]",
        status,
        f"tasks {tasks}",
        f"attempts {attempts}",
        _duration(step.started_at, end) if step.started_at else "-",
    ]
    if len(step.dependencies) > 1:
        parts.append("after " + ", ".join(step.dependencies))
    return "  ".join(parts)


def _step_details(run: Run, step: StepState, *, with_failed_tasks: bool = True) -> list[str]:
    details = []
    if step.skip_reason:
        details.append(f"skipped: {step.skip_reason}")
    if step.error_message:
        details.append(f"error: {step.error_message}")
    counts = Counter(t.status for t in step.tasks)
    left_open = run.finished and step.status in _LEFT_OPEN
    if counts and (left_open or len(counts) > 1):  # what became of each task
        details.append(
            "tasks: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
    if not with_failed_tasks:  # the attempts show them
        return details
    failed = [t for t in step.tasks if t.error_message and t.status != "completed"]
    for task in failed[:3]:
        details.append(
            f"task {task.task_index} ({task.status}, attempt {task.attempts_count}): {task.error_message}"
        )
    if len(failed) > 3:
        details.append(f"... and {len(failed) - 3} more failed tasks")
    return details


# in a step of more tasks than this, tasks that completed at their first attempt are only counted
ATTEMPTS_LISTED_TASKS = 10


def _attempt_lines(
    attempts: Sequence[TaskAttempt], tracebacks: bool, all_attempts: bool
) -> list[str]:
    """One line per attempt: task, attempt, outcome, start and end, duration, worker, error;
    the traceback under it when asked for. In a step of many tasks, unless `all_attempts`, the
    tasks whose one attempt completed are counted on one line instead."""
    tasks: dict[int, list[TaskAttempt]] = {}
    for attempt in attempts:
        tasks.setdefault(attempt.task_index, []).append(attempt)
    plain = {
        index for index, task in tasks.items() if len(task) == 1 and task[0].outcome == "completed"
    }
    if all_attempts or len(tasks) <= ATTEMPTS_LISTED_TASKS:
        plain = set()
    lines: list[str] = []
    for index, task in tasks.items():
        if index in plain:
            continue
        for attempt in task:
            lines.append(_attempt_line(attempt))
            if tracebacks and attempt.traceback:
                lines.extend("    " + line for line in attempt.traceback.splitlines())
    if plain:
        lines.append(
            f"{len(plain)} more tasks completed at their first attempt (--all-attempts lists them)"
        )
    return lines


def _attempt_line(attempt: TaskAttempt) -> str:
    parts = [
        f"task {attempt.task_index}",
        f"attempt {attempt.attempt}",
        attempt.outcome,
        f"{_clock(attempt.started_at)} -> {_clock(attempt.ended_at)}",
        _duration(attempt.started_at, attempt.ended_at),
        f"worker {attempt.worker_id[:8]}" if attempt.worker_id else "worker -",
    ]
    line = "  ".join(parts)
    return f"{line}: {attempt.error_message}" if attempt.error_message else line


def _clock(moment: datetime | None) -> str:
    """A time of day in the local time zone, to the millisecond."""
    if moment is None:
        return "?"
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


def register_cancel(commands: Subparsers) -> None:
    p = add_command(commands, "cancel", cmd_cancel, "Cancel a started run.")
    p.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)


def cmd_cancel(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        run_id = client.find_run_id(args.run_id)
        before = client.status(run_id)
        status = client.cancel(run_id) if before == "started" else before
    if before == "started" and status == "cancelled":
        print(f"run {run_id} cancelled")
    else:
        print(f"run {run_id} had already finished ({status}); nothing to cancel")
    return EXIT_OK
