"""The parser plumbing every command module uses: subcommands that carry the global options,
command groups, and argument types with messages that say what to type instead."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgflow.db.dsn import EMBEDDED_SOURCE, redact, resolve_dsn

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Subparsers = argparse._SubParsersAction

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse uses
EXIT_INTERRUPTED = 130


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


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
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
    add_global_options(parent, defaults=False)
    return parent


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"--input is not valid JSON ({exc.msg} at position {exc.pos}); quote it for the "
            """shell, e.g. --input '{"url": "https://example.org"}'"""
        ) from None


def database(args: argparse.Namespace, *, announce: bool = False) -> str:
    """The DSN a command uses: --dsn, PGFLOW_DSN, DATABASE_URL, else the embedded server.

    Says on stderr which database it is when `announce` is set, and always when it falls back
    to the embedded server, which nobody asked for by name.
    """
    dsn, source = resolve_dsn(args.dsn, embedded_fallback=True)
    if announce or source == EMBEDDED_SOURCE:
        print(f"database: {redact(dsn)} (from {source})", file=sys.stderr)
    return dsn
