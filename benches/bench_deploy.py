"""What a deploy costs: seconds from SIGTERM to a worker with unfinished tasks until another
worker has completed them.

Worker A (`pgflow worker`, `--shutdown-grace 1`) claims every task of a map whose tasks sleep
3 s (step timeout 5 s); A gets SIGTERM while they run; worker B starts at the same moment, as a
deploy's new worker would. Printed: when A exited, when B completed the run, and the attempts
each task used. Before the stop gave tasks back, B waited for the stalled-task sweep: timeout +
30 s + up to its 15 s period.

    python benches/bench_deploy.py --dsn postgresql://... [--tasks 2] [--rounds 3]

Without --dsn: $PGFLOW_DSN, else the embedded server.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgflow.client import Client
from pgflow.db.dsn import redact, resolve_dsn
from pgflow.db.migrations import migrate

HERE = Path(__file__).resolve().parent
FLOW_REF = "deploy_flows:deploy"
TASK_SECONDS = 3.0
GRACE = 1.0


def _worker(dsn: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow",
            "--dsn",
            dsn,
            "worker",
            FLOW_REF,
            "--shutdown-grace",
            str(GRACE),
            "--concurrency",
            "8",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait(condition, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_round(dsn: str, tasks: int) -> tuple[float, float, list[int]]:
    with Client(dsn) as client, psycopg.connect(dsn, autocommit=True) as conn:

        def started(run_id: str) -> bool:
            row = conn.execute(
                "select count(*) from pgflow.step_tasks where run_id = %s and status = 'started'",
                (run_id,),
            ).fetchone()
            return row is not None and row[0] == tasks

        first = _worker(dsn)
        try:
            _wait(
                lambda: (
                    conn.execute(
                        "select 1 from pgflow.workers w where w.function_name is not null"
                        " and w.queue_name = 'bench_deploy' and w.stopped_at is null"
                        " and w.last_heartbeat_at > now() - interval '5 seconds'"
                        " and exists (select 1 from pgflow.flows f where f.flow_slug = 'bench_deploy')"
                    ).fetchone()
                    is not None
                ),
                "worker A to register",
            )
            run_id = client.start(
                "bench_deploy", [{"n": n, "seconds": TASK_SECONDS} for n in range(tasks)]
            )
            _wait(lambda: started(run_id), "worker A to start every task")
            time.sleep(0.5)  # well inside the tasks: they are cut off, not finished
            stop = time.monotonic()
            first.send_signal(signal.SIGTERM)
            second = _worker(dsn)
            try:
                first.wait(60)
                exited = time.monotonic() - stop
                client.wait(run_id, timeout=120)
                done = time.monotonic() - stop
                attempts = [
                    int(r[0])
                    for r in conn.execute(
                        "select attempts_count from pgflow.step_tasks where run_id = %s"
                        " order by task_index",
                        (run_id,),
                    )
                ]
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(60)
        finally:
            if first.poll() is None:
                first.kill()
    return exited, done, attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn, _ = resolve_dsn(args.dsn, embedded_fallback=True)
    migrate(dsn)
    print(
        f"database {redact(dsn)}; {args.tasks} task(s) of {TASK_SECONDS:g}s, timeout 5s, "
        f"grace {GRACE:g}s"
    )
    done_times = []
    for n in range(1, args.rounds + 1):
        exited, done, attempts = one_round(dsn, args.tasks)
        done_times.append(done)
        print(
            f"round {n}: worker A exited {exited:.1f}s after SIGTERM; worker B completed the "
            f"run {done:.1f}s after it; attempts per task {attempts}"
        )
    print(
        f"median: run complete {statistics.median(done_times):.1f}s after SIGTERM "
        f"(of which {TASK_SECONDS:g}s is the task running again on worker B)"
    )


if __name__ == "__main__":
    main()
