"""`pgflow workers`: the workers the database knows of, newest first, and whether each is live,
stopped or presumed dead (as `pgflow.db.workers` defines it)."""

from __future__ import annotations

import argparse

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, database, positive_int
from pgflow.client import Client
from pgflow.db.workers import PRESUMED_DEAD_AFTER


def register(commands: Subparsers) -> None:
    p = add_command(
        commands,
        "workers",
        cmd_workers,
        "Workers, newest first: flow, id, host:pid, last heartbeat and state (live, stopped, "
        f"or presumed dead after {PRESUMED_DEAD_AFTER:g} s without a heartbeat).",
    )
    p.add_argument("--flow", default=None, help="only the workers of this flow")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")


def cmd_workers(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        workers = client.workers(flow=args.flow, limit=args.limit)
    if not workers:
        print("no workers" + (f" of flow {args.flow}" if args.flow else ""))
        return EXIT_OK
    flow_width = max(4, *(len(w.flow_slug) for w in workers))
    where_width = max(5, *(len(w.function_name) for w in workers))
    print(
        f"{'flow':<{flow_width}}  {'worker_id':<36}  {'where':<{where_width}}  "
        f"{'last heartbeat':<14}  state"
    )
    for w in workers:
        print(
            f"{w.flow_slug:<{flow_width}}  {w.worker_id:<36}  {w.function_name:<{where_width}}  "
            f"{_age(w.heartbeat_age):<14}  {w.state}"
        )
    return EXIT_OK


def _age(seconds: float) -> str:
    """How long ago, in the largest unit that fits: '4 s ago', '12 min ago', '3 h ago'."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"
