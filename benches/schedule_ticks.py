"""One run per tick under several workers, one of them killed: three `pgflow worker` processes
serve a flow whose schedule ticks every second; the first is killed with SIGKILL after a few
ticks, the others are stopped after more. Prints the runs each tick started (one each).

    python benches/schedule_ticks.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
        [--workers 3] [--ticks 14] [--kill-after 6]

`--dsn` names a server and a role that may create databases: the script creates
`pgflow_ticks_<hex>`, migrates it, and drops it at the end. Exit status 1 when a tick started
other than one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import psycopg.conninfo
from psycopg import sql

from pgflow.db.dsn import redact
from pgflow.db.migrations import migrate

BENCHES = Path(__file__).resolve().parent

FIRED = "select count(*) from pgflow.run_headers where headers ? 'pgflow-schedule'"
PER_TICK = """
select h.headers ->> 'pgflow-scheduled-at' as tick, count(*) as runs,
       string_agg(r.status, ',') as statuses
from pgflow.run_headers h join pgflow.runs r using (run_id)
where h.headers ->> 'pgflow-schedule' = 'every_second'
group by 1 order by 1
"""


def _wait(condition: Callable[[], bool], what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=14)
    parser.add_argument("--kill-after", type=int, default=6)
    args = parser.parse_args()

    name = f"pgflow_ticks_{uuid.uuid4().hex[:12]}"
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        migrate(dsn)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHES), *sys.path])}
        command = [sys.executable, "-m", "pgflow", "--dsn", dsn, "worker", "schedule_flows:ticker"]
        workers = [
            subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]
        with psycopg.connect(dsn, autocommit=True) as conn:

            def fired() -> int:
                row = conn.execute(FIRED).fetchone()
                return int(row[0]) if row else 0

            _wait(lambda: fired() >= args.kill_after, f"{args.kill_after} ticks")
            os.kill(workers[0].pid, signal.SIGKILL)
            print(f"killed worker pid {workers[0].pid} (SIGKILL) after {fired()} ticks")
            _wait(lambda: fired() >= args.ticks, f"{args.ticks} ticks")
            for worker in workers[1:]:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(60)
            rows = conn.execute(PER_TICK).fetchall()
        print(f"database {redact(dsn)}, {args.workers} workers")
        for tick, runs, statuses in rows:
            print(f"{tick}  runs={runs}  {statuses}")
        per_tick = Counter(runs for _, runs, _ in rows)
        print(f"{len(rows)} ticks, runs per tick: {dict(per_tick)}")
        return 0 if set(per_tick) == {1} else 1
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    raise SystemExit(main())
