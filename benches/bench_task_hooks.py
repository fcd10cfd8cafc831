"""What task hooks cost: `pgflow bench map` with no plugin at all, with the installed plugins
(entry points) left unconfigured, and with a plugin whose four task hooks do nothing, in
interleaved rounds on one database.

    python benches/bench_task_hooks.py --dsn postgresql://.../mydb [--rounds 5] [--map-tasks 20000]

Printed per variant: which task hooks a worker would call, tasks per second of every round, and
the CPU time of the `pgflow bench` process tree per task (less sensitive than wall time to a
shared machine): the CPU of a run of `--map-tasks` minus that of a run of 10 tasks, over the
difference in tasks, so that what a process spends once (imports of the installed plugins'
libraries, connecting, compiling the flow) is left out; then medians and each variant's
difference from "no plugin".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from pgflow.db.dsn import redact

BENCHES = Path(__file__).resolve().parent
SMALL = 10  # tasks of the run whose CPU time is what a process spends once
PROBE = (
    "from pgflow.plugins.manager import task_hooks\n"
    "h = task_hooks()\n"
    "print(','.join(n for n in ('claimed', 'started', 'finished', 'failed')"
    " if getattr(h, n) is not None) or 'none')\n"
)


def _variants() -> dict[str, dict[str, str | None]]:
    installed = sorted({ep.name for ep in importlib.metadata.entry_points(group="pgflow")})
    no_entry_points = ",".join(installed) or None
    return {
        "no plugin": {"PGFLOW_DISABLE_PLUGINS": no_entry_points, "PGFLOW_PLUGINS": None},
        f"installed ({', '.join(installed) or 'none'})": {
            "PGFLOW_DISABLE_PLUGINS": None,
            "PGFLOW_PLUGINS": None,
        },
        "no-op task hooks": {
            "PGFLOW_DISABLE_PLUGINS": no_entry_points,
            "PGFLOW_PLUGINS": "noop_task_hooks",
        },
    }


def _env(changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PGFLOW_PROMETHEUS_PORT", "PGFLOW_EVENTS_LOG", "PGFLOW_EVENTS_JSONL"):
        env.pop(name, None)  # installed plugins and sinks stay unconfigured
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHES), env.get("PYTHONPATH")]))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _command() -> list[str]:
    pgflow = Path(sys.executable).with_name("pgflow")
    return [str(pgflow)] if pgflow.exists() else [sys.executable, "-m", "pgflow"]


def _map(dsn: str, tasks: int, env: dict[str, str]) -> tuple[float, float]:
    """(tasks per second, CPU seconds of the bench process tree per task)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*_command(), "bench", "map", "--map-tasks", str(tasks), "--dsn", dsn, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"pgflow bench map failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result.get("verified"):
        raise SystemExit(f"the map bench did not verify its run: {result}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(result["tasks_per_second"]), cpu / tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--map-tasks", type=int, default=20_000)
    args = parser.parse_args()

    variants = _variants()
    print(f"database {redact(args.dsn)}, map of {args.map_tasks} no-op tasks, {args.rounds} rounds")
    for name, changes in variants.items():
        probe = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=_env(changes),
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"  {name}: task hooks a worker calls: {probe.stdout.strip()}")

    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(1, args.rounds + 1):
        order = list(variants) if round_no % 2 else list(reversed(variants))
        for name in order:
            env = _env(variants[name])
            _, fixed = _map(args.dsn, SMALL, env)
            rate, cpu = _map(args.dsn, args.map_tasks, env)
            cpu = (cpu * args.map_tasks - fixed * SMALL) / (args.map_tasks - SMALL)
            rates[name].append(rate)
            cpus[name].append(cpu)
            print(
                f"round {round_no}  {name:<40} {rate:8,.0f} tasks/s  {cpu * 1e6:6.1f} µs CPU/task"
            )

    base_rate = statistics.median(rates["no plugin"])
    base_cpu = statistics.median(cpus["no plugin"])
    print("\nmedians")
    for name in variants:
        rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
        print(
            f"  {name:<40} {rate:8,.0f} tasks/s ({(rate / base_rate - 1) * 100:+5.1f}%)"
            f"  {cpu * 1e6:6.1f} µs CPU/task ({(cpu - base_cpu) * 1e6:+5.1f} µs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
