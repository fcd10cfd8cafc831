"""`pgflow demo`: the bundled example flow end to end, on the embedded PostgreSQL by default."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, database, positive_int
from pgflow.cli.progress import StatusLine
from pgflow.cli.runs import wait_with_progress
from pgflow.client import Client
from pgflow.db.migrations import migrate
from pgflow.errors import PgflowError
from pgflow.examples.demo import flow
from pgflow.worker import Worker


def register(commands: Subparsers) -> None:
    p = add_command(
        commands,
        "demo",
        cmd_demo,
        "Run the bundled example flow end to end (embedded Postgres by default).",
    )
    p.add_argument(
        "--pages", type=positive_int, default=150, help="map tasks in the demo (default 150)"
    )
    p.add_argument("--executor", default="thread")
    p.add_argument("--concurrency", type=positive_int, default=16)


def cmd_demo(args: argparse.Namespace) -> int:
    line = StatusLine()
    line.update("preparing the database...")
    dsn = database(args, announce=True)
    line.clear()
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
            code = wait_with_progress(client, run_id, timeout=300)
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
