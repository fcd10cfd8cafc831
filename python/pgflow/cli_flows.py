"""`pgflow` commands for flows and runs: worker, start, runs, flows, cancel, demo, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgflow.client import Client, Run, RunFailed, StepState
from pgflow.dsn import redact, resolve_dsn
from pgflow.errors import PgflowError
from pgflow.progress import StatusLine

if TYPE_CHECKING:
    from pgflow.cli import Subparsers

EXIT_OK = 0
EXIT_FAILED = 1


def _add_command(
    commands: Subparsers, name: str, handler: Any, help: str
) -> argparse.ArgumentParser:
    from pgflow.cli import add_command

    return add_command(commands, name, handler, help)


def _add_group(commands: Subparsers, name: str, help: str) -> Subparsers:
    from pgflow.cli import add_group

    return add_group(commands, name, help)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"--input is not valid JSON ({exc.msg} at position {exc.pos}); quote it for the "
            """shell, e.g. --input '{"url": "https://example.org"}'"""
        ) from None


# -- worker -------------------------------------------------------------------------------------


def register_worker(commands: Subparsers) -> None:
    p = _add_command(commands, "worker", cmd_worker, "Run the tasks of one or more flows.")
    p.add_argument(
        "flows", nargs="+", metavar="MODULE:FLOW", help="flows to serve, e.g. app.flows:flow"
    )
    p.add_argument(
        "--executor",
        default="thread",
        help="thread (default), process, asyncio, inline, or a plugin's",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=10,
        help="handlers running at once (default 10)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="tasks claimed per round trip (default: concurrency)",
    )
    p.add_argument(
        "--per-task",
        action="store_true",
        help="use only the per-task contract functions (slower; for comparison)",
    )
    p.add_argument(
        "--allow-data-loss",
        action="store_true",
        help="replace a flow whose shape changed, deleting its runs (development only)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between polls when no NOTIFY arrives (default 1)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds in-flight tasks get on SIGTERM (default 30)",
    )
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")


def cmd_worker(args: argparse.Namespace) -> int:
    import sys as _sys
    from pathlib import Path

    from pgflow.worker import Worker

    # let `pgflow worker app.flows:flow` import from the current directory, like `python -m`
    cwd = str(Path.cwd())
    if cwd not in _sys.path:
        _sys.path.insert(0, cwd)
    if args.quiet:
        logging.getLogger("pgflow").setLevel(logging.WARNING)
    worker = Worker(
        args.flows,
        dsn=args.dsn,
        executor=args.executor,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        per_task=args.per_task,
        allow_data_loss=args.allow_data_loss,
        poll_interval=args.poll_interval,
        shutdown_grace=args.shutdown_grace,
    )
    worker.run()
    return EXIT_OK


# -- start --------------------------------------------------------------------------------------


def register_start(commands: Subparsers) -> None:
    p = _add_command(commands, "start", cmd_start, "Start a run of a flow.")
    p.add_argument("flow", metavar="FLOW", help="the flow's slug")
    p.add_argument(
        "--input", type=_json_arg, default={}, metavar="JSON", help="the run input (default {})"
    )
    p.add_argument("--run-id", default=None, help="use this run id instead of a new one")
    p.add_argument("--wait", action="store_true", help="wait for the run and print its output")
    p.add_argument(
        "--timeout", type=float, default=None, help="with --wait: give up after this many seconds"
    )


def cmd_start(args: argparse.Namespace) -> int:
    with Client(args.dsn) as client:
        run_id = client.start(args.flow, args.input, args.run_id)
        if not args.wait:
            print(run_id)
            return EXIT_OK
        print(f"run {run_id} started", file=sys.stderr)
        return _wait_with_progress(client, run_id, args.timeout)


def _progress_text(run: Run, started: float) -> str:
    steps_done = sum(1 for s in run.steps if s.status != "created" and s.status != "started")
    tasks_total = sum((s.initial_tasks or 0) for s in run.steps)
    tasks_done = sum(s.tasks_done for s in run.steps)
    return (
        f"run {run.run_id[:8]} {run.status}: steps {steps_done}/{len(run.steps)}, "
        f"tasks {tasks_done}/{tasks_total}, {time.monotonic() - started:.1f}s"
    )


def _wait_with_progress(client: Client, run_id: str, timeout: float | None) -> int:
    line = StatusLine()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    while True:
        run = client.get(run_id)
        line.update(_progress_text(run, started))
        if run.finished:
            line.clear()
            break
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
    return EXIT_FAILED


# -- runs ---------------------------------------------------------------------------------------


def register_runs(commands: Subparsers) -> None:
    runs = _add_group(commands, "runs", "List and inspect runs.")
    p = _add_command(runs, "list", cmd_runs_list, "The newest runs.")
    p.add_argument("--flow", default=None)
    p.add_argument(
        "--status", default=None, choices=["started", "completed", "failed", "cancelled"]
    )
    p.add_argument("--limit", type=_positive_int, default=50)
    p = _add_command(
        runs,
        "show",
        cmd_runs_show,
        "A run's steps as a tree, with status, attempts, timing and errors.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print the run as JSON")


def cmd_runs_list(args: argparse.Namespace) -> int:
    with Client(args.dsn) as client:
        runs = client.runs(flow=args.flow, status=args.status, limit=args.limit)
    if not runs:
        print("no runs")
        return EXIT_OK
    print(f"{'run_id':<36}  {'flow':<20} {'status':<10} {'started':<19}  duration")
    for run in runs:
        print(
            f"{run.run_id:<36}  {run.flow_slug:<20} {run.status:<10} "
            f"{run.started_at:%Y-%m-%d %H:%M:%S}  {_duration(run.started_at, run.finished_at)}"
        )
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    with Client(args.dsn) as client:
        run = client.get(args.run_id)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(run), indent=2, default=str))
        return EXIT_OK
    print(render_run(run))
    return EXIT_OK


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    if end is None:
        return "running"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render_run(run: Run) -> str:
    """The run's steps as a tree: each step under its first dependency."""
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
            lines.append(prefix + branch + _step_line(step))
            detail_prefix = prefix + ("   " if last else "│  ")
            for detail in _step_details(step):
                lines.append(detail_prefix + "   " + detail)
            walk(step.step_slug, detail_prefix)

    walk(None, "")
    return "\n".join(lines)


def _step_line(step: StepState) -> str:
    tasks = f"{step.tasks_done}/{step.initial_tasks}" if step.initial_tasks is not None else "?"
    attempts = max((t.attempts_count for t in step.tasks), default=0)
    end = step.completed_at or step.failed_at or step.skipped_at
    parts = [
        f"{step.step_slug}",
        f"[{step.step_type}]",
        step.status,
        f"tasks {tasks}",
        f"attempts {attempts}",
        _duration(step.started_at, end) if step.started_at else "-",
    ]
    if len(step.dependencies) > 1:
        parts.append("after " + ", ".join(step.dependencies))
    return "  ".join(parts)


def _step_details(step: StepState) -> list[str]:
    details = []
    if step.skip_reason:
        details.append(f"skipped: {step.skip_reason}")
    if step.error_message:
        details.append(f"error: {step.error_message}")
    failed = [t for t in step.tasks if t.error_message and t.status != "completed"]
    for task in failed[:3]:
        details.append(
            f"task {task.task_index} ({task.status}, attempt {task.attempts_count}): {task.error_message}"
        )
    if len(failed) > 3:
        details.append(f"... and {len(failed) - 3} more failed tasks")
    return details


# -- flows --------------------------------------------------------------------------------------


def register_flows(commands: Subparsers) -> None:
    flows = _add_group(commands, "flows", "List and inspect flow definitions.")
    _add_command(flows, "list", cmd_flows_list, "Flows defined in the database.")
    p = _add_command(flows, "show", cmd_flows_show, "A flow's steps and options.")
    p.add_argument("flow", metavar="FLOW")


def cmd_flows_list(args: argparse.Namespace) -> int:
    dsn, _ = resolve_dsn(args.dsn)
    from pgflow.db import connect

    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select f.flow_slug, (select count(*) from pgflow.steps s where s.flow_slug = f.flow_slug), "
            "(select count(*) from pgflow.runs r where r.flow_slug = f.flow_slug), f.created_at "
            "from pgflow.flows f order by f.flow_slug"
        ).fetchall()
    if not rows:
        print("no flows (a worker defines its flows when it starts)")
        return EXIT_OK
    print(f"{'flow':<30} {'steps':>5} {'runs':>8}  created")
    for slug, steps, runs, created in rows:
        print(f"{slug:<30} {steps:>5} {runs:>8}  {created:%Y-%m-%d %H:%M:%S}")
    return EXIT_OK


def cmd_flows_show(args: argparse.Namespace) -> int:
    dsn, _ = resolve_dsn(args.dsn)
    from pgflow.db import connect

    with connect(dsn, autocommit=True) as conn:
        flow = conn.execute(
            "select opt_max_attempts, opt_base_delay, opt_timeout from pgflow.flows where flow_slug = %s",
            (args.flow,),
        ).fetchone()
        if flow is None:
            raise PgflowError(
                f"flow {args.flow!r} does not exist; `pgflow flows list` shows the flows"
            )
        steps = conn.execute(
            "select s.step_slug, s.step_type, coalesce((select string_agg(d.dep_slug, ', ' order by d.dep_slug) "
            "from pgflow.deps d where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug), ''), "
            "coalesce(s.opt_max_attempts, f.opt_max_attempts), coalesce(s.opt_base_delay, f.opt_base_delay), "
            "coalesce(s.opt_timeout, f.opt_timeout), coalesce(s.opt_start_delay, 0), "
            "s.required_input_pattern, s.forbidden_input_pattern, s.when_unmet, s.when_exhausted "
            "from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug "
            "where s.flow_slug = %s order by s.step_index",
            (args.flow,),
        ).fetchall()
    print(f"flow {args.flow}: max_attempts {flow[0]}, base_delay {flow[1]}s, timeout {flow[2]}s")
    for (
        slug,
        kind,
        deps,
        attempts,
        delay,
        timeout,
        start_delay,
        req,
        forb,
        unmet,
        exhausted,
    ) in steps:
        line = f"  {slug} [{kind}]"
        if deps:
            line += f" after {deps}"
        line += f"  attempts {attempts}, base_delay {delay}s, timeout {timeout}s"
        if start_delay:
            line += f", start_delay {start_delay}s"
        if req is not None or forb is not None:
            line += f", if {json.dumps(req)} if_not {json.dumps(forb)} (else {unmet})"
        if exhausted != "fail":
            line += f", when exhausted: {exhausted}"
        print(line)
    return EXIT_OK


# -- cancel -------------------------------------------------------------------------------------


def register_cancel(commands: Subparsers) -> None:
    p = _add_command(commands, "cancel", cmd_cancel, "Cancel a started run.")
    p.add_argument("run_id", metavar="RUN_ID")


def cmd_cancel(args: argparse.Namespace) -> int:
    with Client(args.dsn) as client:
        before = client.status(args.run_id)
        status = client.cancel(args.run_id) if before == "started" else before
    if before == "started" and status == "cancelled":
        print(f"run {args.run_id} cancelled")
    else:
        print(f"run {args.run_id} had already finished ({status}); nothing to cancel")
    return EXIT_OK


# -- demo ---------------------------------------------------------------------------------------


def register_demo(commands: Subparsers) -> None:
    p = _add_command(
        commands,
        "demo",
        cmd_demo,
        "Run the bundled example flow end to end (embedded Postgres by default).",
    )
    p.add_argument(
        "--pages", type=_positive_int, default=150, help="map tasks in the demo (default 150)"
    )
    p.add_argument("--executor", default="thread")
    p.add_argument("--concurrency", type=_positive_int, default=16)


def cmd_demo(args: argparse.Namespace) -> int:
    from pgflow.examples.demo import flow
    from pgflow.migrate import migrate
    from pgflow.worker import Worker

    line = StatusLine()
    line.update("preparing the database...")
    dsn, source = resolve_dsn(args.dsn)
    line.clear()
    print(f"database: {redact(dsn)} (from {source})", file=sys.stderr)
    applied = migrate(dsn)
    if applied:
        print(f"migrated: {len(applied)} migration(s) applied", file=sys.stderr)
    logging.getLogger("pgflow").setLevel(logging.WARNING)
    worker = Worker(
        [flow],
        dsn=dsn,
        executor=args.executor,
        concurrency=args.concurrency,
        install_signal_handlers=False,
    )
    thread = threading.Thread(target=worker.run, name="pgflow-demo-worker", daemon=True)
    thread.start()
    try:
        if not worker.started.wait(60):
            raise PgflowError("the demo worker did not start within 60 s")
        print(
            f"flow {flow.slug}: plan -> (analyze x{args.pages} | estimate_cost | check_links) -> report; "
            f"worker: {args.executor} executor x{args.concurrency}",
            file=sys.stderr,
        )
        with Client(dsn) as client:
            run_id = client.start(flow, {"site": "example.org", "pages": args.pages})
            print(f"run {run_id} started", file=sys.stderr)
            code = _wait_with_progress(client, run_id, timeout=300)
            if code == EXIT_OK:
                run = client.get(run_id)
                print(
                    f"{sum(len(s.tasks) for s in run.steps)} tasks in {len(run.steps)} steps; "
                    f"see `pgflow runs show {run_id}`",
                    file=sys.stderr,
                )
            return code
    finally:
        worker.stop()
        thread.join(30)


# -- bench --------------------------------------------------------------------------------------


def register_bench(commands: Subparsers) -> None:
    from pgflow.bench import SCENARIOS, BenchSettings

    d = BenchSettings()
    p = _add_command(
        commands, "bench", cmd_bench, "Measure throughput and latency on this database."
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--workers", type=_positive_int, default=d.workers, help="worker processes")
    p.add_argument("--executor", default=d.executor)
    p.add_argument(
        "--concurrency", type=_positive_int, default=d.concurrency, help="handlers per worker"
    )
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument(
        "--per-task", action="store_true", help="workers use only the per-task contract functions"
    )
    p.add_argument(
        "--no-rust", action="store_true", help="workers use the pure-Python twins of the Rust core"
    )
    p.add_argument("--map-tasks", type=_positive_int, default=d.map_tasks)
    p.add_argument("--chain-runs", type=_positive_int, default=d.chain_runs)
    p.add_argument("--diamond-runs", type=_positive_int, default=d.diamond_runs)
    p.add_argument("--fanout-items", type=_positive_int, default=d.fanout_items)
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per scenario")
    p.add_argument("--json", action="store_true", help="one JSON object per line and scenario")


def cmd_bench(args: argparse.Namespace) -> int:
    from pgflow.bench import SCENARIOS, BenchSettings, format_table, run_benchmarks
    from pgflow.migrate import migrate

    settings = BenchSettings(
        workers=args.workers,
        executor=args.executor,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        per_task=args.per_task,
        no_rust=args.no_rust,
        map_tasks=args.map_tasks,
        chain_runs=args.chain_runs,
        diamond_runs=args.diamond_runs,
        fanout_items=args.fanout_items,
        timeout=args.timeout,
    )
    dsn, source = resolve_dsn(args.dsn)
    print(f"database: {redact(dsn)} (from {source})", file=sys.stderr)
    migrate(dsn)
    line = StatusLine()
    results = []
    for name in args.scenarios or SCENARIOS:
        result = run_benchmarks(dsn, [name], settings, line)[0]
        line.clear()
        print(
            f"{name}: outputs verified ({result.runs} run(s), {result.tasks} tasks)",
            file=sys.stderr,
        )
        if args.json:
            print(result.as_json(), flush=True)
        results.append(result)
    if not args.json:
        print(format_table(results))
    return EXIT_OK


COMMANDS = (
    register_worker,
    register_start,
    register_runs,
    register_flows,
    register_cancel,
    register_demo,
    register_bench,
)
