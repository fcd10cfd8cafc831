"""`pgflow worker`: run the tasks of one or more flows until stopped."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pgflow.cli.parser import (
    EXIT_OK,
    Subparsers,
    add_command,
    database,
    non_negative_int,
    positive_int,
)
from pgflow.worker import Worker, WorkerOptions
from pgflow.worker.options import CLI_FLAGS

# What each flag means and how to parse it; the defaults come from WorkerOptions.
_FLAG_HELP: dict[str, tuple[str, Any]] = {
    "executor": ("thread (default), process, asyncio, inline, or a plugin's", str),
    "concurrency": ("handlers running at once (default {})", positive_int),
    "batch_size": (
        "tasks claimed per round trip (default: concurrency or prefetch, the larger)",
        positive_int,
    ),
    "prefetch": (
        "claimed tasks held while they wait for a free slot, at most about a second of work "
        "(default {}; 0: none)",
        non_negative_int,
    ),
    "per_task": ("use only the per-task contract functions (slower; for comparison)", None),
    "allow_data_loss": (
        "replace a flow whose shape changed, deleting its runs (as the database owner; "
        "development only)",
        None,
    ),
    "poll_interval": ("seconds between polls when no NOTIFY arrives (default {})", float),
    "heartbeat_interval": ("seconds between heartbeats (default {})", float),
    "requeue_interval": ("seconds between sweeps for tasks of dead workers (default {})", float),
    "shutdown_grace": ("seconds in-flight tasks get on SIGTERM (default {})", float),
    "max_output_bytes": (
        "the largest JSON output a task may store; larger fails the task (default {})",
        int,
    ),
    "serializer": (
        "the serializer for flows that name none (default: msgspec); see `pgflow plugins`",
        str,
    ),
    "schedules": (
        "neither reconcile the flows' schedules nor fire their ticks (other workers do)",
        None,
    ),
}


def add_worker_options(
    parser: argparse.ArgumentParser, defaults: WorkerOptions, only: tuple[str, ...] | None = None
) -> None:
    """Add the `pgflow worker` flags of `WorkerOptions` (all, or those named in `only`)."""
    for name, flag in CLI_FLAGS.items():
        if only is not None and name not in only:
            continue
        help_text, kind = _FLAG_HELP[name]
        default = getattr(defaults, name)
        if kind is None:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            parser.add_argument(flag, dest=name, action=action, help=help_text)
        else:
            parser.add_argument(
                flag, dest=name, type=kind, default=default, help=help_text.format(default)
            )


def options_from(args: argparse.Namespace, base: WorkerOptions) -> WorkerOptions:
    """The `WorkerOptions` the parsed flags give, on top of `base`."""
    return base.replace(**{name: getattr(args, name) for name in CLI_FLAGS if hasattr(args, name)})


def register(commands: Subparsers) -> None:
    p = add_command(commands, "worker", cmd_worker, "Run the tasks of one or more flows.")
    p.add_argument(
        "flows", nargs="+", metavar="MODULE:FLOW", help="flows to serve, e.g. app.flows:flow"
    )
    add_worker_options(p, WorkerOptions())
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")


def import_from_cwd() -> None:
    """Let `module:flow` references import from the current directory, like `python -m`."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def cmd_worker(args: argparse.Namespace) -> int:
    import_from_cwd()
    if args.quiet:
        logging.getLogger("pgflow").setLevel(logging.WARNING)
    worker = Worker(args.flows, dsn=database(args), options=options_from(args, WorkerOptions()))
    worker.run()
    return EXIT_OK
