"""What recording attempts costs: `pgflow bench map` with this checkout's package against another
checkout's (the commit before pgflow.task_attempts, say), each on a fresh database migrated by its
own code, in interleaved rounds.

    python benches/bench_attempts.py --server postgresql://postgres@127.0.0.1:5432/postgres \\
        --base /path/to/other/checkout/python [--rounds 3] [--map-tasks 20000]

Creates the databases pgflow_bench_attempts_this and pgflow_bench_attempts_base on that server
(dropped again at the end, unless --keep), and prints per round and as medians the tasks per
second and the CPU time of the `pgflow bench` process tree per task. Every task of the map
bench completes at its first attempt, so this measures the common case: one attempt row per
task, written by the batched report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg
import psycopg.conninfo

from pgflow.db.dsn import redact

THIS = Path(__file__).resolve().parent.parent / "python"
DATABASES = {"this": "pgflow_bench_attempts_this", "base": "pgflow_bench_attempts_base"}


def _env(python_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(python_path)
    env.pop("PGFLOW_DSN", None)
    return env


def _pgflow(python_path: Path, *args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pgflow", *args],
        capture_output=True,
        text=True,
        env=_env(python_path),
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"pgflow {' '.join(args[:2])} failed ({python_path}):\n{done.stderr}")
    return done.stdout


def _map(python_path: Path, dsn: str, tasks: int) -> tuple[float, float]:
    """(tasks per second, CPU seconds of the bench process tree per task)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _pgflow(python_path, "bench", "map", "--map-tasks", str(tasks), "--dsn", dsn, "--json")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    if not result.get("verified"):
        raise SystemExit(f"the map bench did not verify its run: {result}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(result["tasks_per_second"]), cpu / tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="a DSN of the server (any database)")
    parser.add_argument("--base", required=True, type=Path, help="the other checkout's python/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--map-tasks", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    args = parser.parse_args()

    paths = {"this": THIS, "base": args.base.resolve()}
    dsns = {
        name: psycopg.conninfo.make_conninfo(args.server, dbname=db)
        for name, db in DATABASES.items()
    }
    with psycopg.connect(args.server, autocommit=True) as admin:
        for db in DATABASES.values():
            admin.execute(f'drop database if exists "{db}"')
            admin.execute(f'create database "{db}"')
    try:
        for name in paths:
            _pgflow(paths[name], "db", "migrate", "--dsn", dsns[name])
        print(
            f"server {redact(args.server)}, map of {args.map_tasks} no-op tasks, "
            f"{args.rounds} rounds\n  this: {paths['this']}\n  base: {paths['base']}"
        )
        rates: dict[str, list[float]] = {name: [] for name in paths}
        cpus: dict[str, list[float]] = {name: [] for name in paths}
        for round_no in range(1, args.rounds + 1):
            order = ["this", "base"] if round_no % 2 else ["base", "this"]
            for name in order:
                rate, cpu = _map(paths[name], dsns[name], args.map_tasks)
                rates[name].append(rate)
                cpus[name].append(cpu)
                print(
                    f"round {round_no}  {name:<5} {rate:8,.0f} tasks/s  {cpu * 1e6:6.1f} µs CPU/task"
                )
        # the bench deletes its runs when done: count the rows written, not the rows left
        with psycopg.connect(dsns["this"]) as conn:
            row = conn.execute(
                "select n_tup_ins from pg_stat_user_tables"
                " where schemaname = 'pgflow' and relname = 'task_attempts'"
            ).fetchone()
        print(f"attempt rows written on this side: {row[0] if row else 0:,}")
        base_rate, base_cpu = statistics.median(rates["base"]), statistics.median(cpus["base"])
        print("\nmedians")
        for name in paths:
            rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
            print(
                f"  {name:<5} {rate:8,.0f} tasks/s ({(rate / base_rate - 1) * 100:+5.1f}%)"
                f"  {cpu * 1e6:6.1f} µs CPU/task ({(cpu - base_cpu) * 1e6:+5.1f} µs)"
            )
    finally:
        if not args.keep:
            with psycopg.connect(args.server, autocommit=True) as admin:
                for db in DATABASES.values():
                    admin.execute(f'drop database if exists "{db}" with (force)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
