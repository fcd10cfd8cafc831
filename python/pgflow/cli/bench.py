"""`pgflow bench`: throughput and latency of this engine on this database."""

from __future__ import annotations

import argparse
import sys

from pgflow.bench import SCENARIOS, BenchSettings, check_settings, format_table, run_benchmarks
from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, database, positive_int
from pgflow.cli.progress import StatusLine
from pgflow.cli.worker import add_worker_options, options_from
from pgflow.db.migrations import migrate

_WORKER_FLAGS = ("executor", "concurrency", "batch_size", "prefetch", "per_task")


def register(commands: Subparsers) -> None:
    d = BenchSettings()
    p = add_command(
        commands, "bench", cmd_bench, "Measure throughput and latency on this database."
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--workers", type=positive_int, default=d.workers, help="worker processes")
    add_worker_options(p, d.worker, only=_WORKER_FLAGS)
    p.add_argument(
        "--no-rust",
        action="store_true",
        help="workers use the msgspec fallback instead of the Rust core",
    )
    p.add_argument("--map-tasks", type=positive_int, default=d.map_tasks)
    p.add_argument("--chain-runs", type=positive_int, default=d.chain_runs)
    p.add_argument("--diamond-runs", type=positive_int, default=d.diamond_runs)
    p.add_argument("--fanout-items", type=positive_int, default=d.fanout_items)
    p.add_argument("--cpu-tasks", type=positive_int, default=d.cpu_tasks)
    p.add_argument("--io-tasks", type=positive_int, default=d.io_tasks)
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per scenario")
    p.add_argument("--json", action="store_true", help="one JSON object per line and scenario")


def cmd_bench(args: argparse.Namespace) -> int:
    settings = BenchSettings(
        workers=args.workers,
        worker=options_from(args, BenchSettings().worker),
        no_rust=args.no_rust,
        map_tasks=args.map_tasks,
        chain_runs=args.chain_runs,
        diamond_runs=args.diamond_runs,
        fanout_items=args.fanout_items,
        cpu_tasks=args.cpu_tasks,
        io_tasks=args.io_tasks,
        timeout=args.timeout,
    )
    scenarios = args.scenarios or SCENARIOS
    check_settings(scenarios, settings)  # before the database is touched
    dsn = database(args, announce=True)
    migrate(dsn)
    line = StatusLine()
    results = []
    for name in scenarios:
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
