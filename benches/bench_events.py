"""What keeping events costs: `pgflow bench diamond` with the database setting pgflow.events
off and on, in interleaved rounds (off, on, off, on, ...), on one database.

    python benches/bench_events.py --dsn postgresql://.../mydb [--rounds 3] [--runs 5000]

The database must be migrated; its setting pgflow.events is set back to what it was afterwards.
Printed: tasks per second of every round, the median of each side, and the cost of events on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from pgflow.db.dsn import redact


def _set_events(dsn: str, value: str | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        name = sql.Identifier(conn.info.dbname)
        if value is None:
            conn.execute(sql.SQL("alter database {} reset pgflow.events").format(name))
        else:
            conn.execute(
                sql.SQL("alter database {} set pgflow.events = {}").format(name, sql.Literal(value))
            )


def _current(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select current_setting('pgflow.events', true)").fetchone()
    return row[0] or None if row else None


def _diamond(dsn: str, runs: int) -> float:
    pgflow = Path(sys.executable).with_name("pgflow")
    command = [str(pgflow)] if pgflow.exists() else [sys.executable, "-m", "pgflow"]
    done = subprocess.run(
        [*command, "bench", "diamond", "--diamond-runs", str(runs), "--dsn", dsn, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result.get("verified"):
        raise SystemExit(f"the diamond bench did not verify its runs: {result}")
    return float(result["tasks_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    before = _current(args.dsn)
    figures: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_number in range(1, args.rounds + 1):
            for setting in ("off", "on"):
                _set_events(args.dsn, setting)
                tasks_per_second = _diamond(args.dsn, args.runs)
                figures[setting].append(tasks_per_second)
                print(f"round {round_number} events {setting:<3} {tasks_per_second:9.0f} tasks/s")
    finally:
        _set_events(args.dsn, before)
    off, on = (statistics.median(figures[s]) for s in ("off", "on"))
    print(f"database {redact(args.dsn)}, diamond, {args.runs} runs per round")
    print(f"median events off {off:9.0f} tasks/s")
    print(f"median events on  {on:9.0f} tasks/s")
    print(f"cost of events    {100 * (off - on) / off:8.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
