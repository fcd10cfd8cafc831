"""`pgflow db`: install pgmq, apply migrations, show the database's state, grant the pgflow
roles, delete old data, and look after the embedded server."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, add_group, database
from pgflow.cli.progress import ticking
from pgflow.db import embedded
from pgflow.db.dsn import redact, resolve_dsn
from pgflow.db.events import set_events
from pgflow.db.migrations import MigrationStatus, migrate, status
from pgflow.db.prune import Pruned, prune
from pgflow.db.roles import CLIENT_ROLE, WORKER_ROLE, grant_roles


def register(commands: Subparsers) -> None:
    db = add_group(commands, "db", "Database schema: migrate and inspect.")
    add_command(db, "migrate", cmd_migrate, "Install pgmq and apply pending migrations.")
    add_command(db, "status", cmd_status, "Show the database, pgmq and migration state.")
    p = add_command(
        db,
        "grant",
        cmd_grant,
        f"Make logins members of {WORKER_ROLE} (runs `pgflow worker`) or {CLIENT_ROLE} (starts "
        "and watches runs); see docs/security.md.",
    )
    for option, role in (("--worker", WORKER_ROLE), ("--client", CLIENT_ROLE)):
        p.add_argument(
            option,
            action="append",
            default=[],
            metavar="ROLE",
            help=f"grant {role} to this login (repeatable)",
        )

    p = add_command(
        db,
        "prune",
        cmd_prune,
        "Delete finished runs (with their steps, tasks and messages), dead workers and archived "
        "queue messages older than a duration (as the owner of schema pgflow).",
    )
    p.add_argument(
        "--older-than",
        required=True,
        type=duration,
        metavar="DURATION",
        help="e.g. 30m, 12h, 7d, 2w (units: s, m, h, d, w)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )

    p = add_command(
        db,
        "events",
        cmd_events,
        "Keep run, step and task events for event sinks (on) or not (off, the default); "
        "workers started afterwards see it (see docs/events.md).",
    )
    p.add_argument("state", choices=("on", "off"))

    embedded_commands = add_group(
        db, "embedded", "The embedded PostgreSQL used when no database is configured."
    )
    add_command(
        embedded_commands,
        "status",
        cmd_embedded_status,
        "Where its data lives, whether it runs (pid, socket, port) and its size.",
    )
    add_command(
        embedded_commands,
        "stop",
        cmd_embedded_stop,
        "Stop it (fast shutdown: sessions are disconnected, nothing committed is lost); the next "
        "command that needs it starts it again.",
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    dsn, source = resolve_dsn(args.dsn, embedded_fallback=True)
    print(f"database: {redact(dsn)} (from {source})")
    applied = migrate(dsn, progress=print)
    print(f"done: applied {len(applied)} migration(s)" if applied else "up to date")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    dsn, source = resolve_dsn(args.dsn, embedded_fallback=True)
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


def cmd_grant(args: argparse.Namespace) -> int:
    for done in grant_roles(database(args, announce=True), worker=args.worker, client=args.client):
        if done.already:
            print(f"{done.login} already has {done.role}")
        else:
            print(f"granted {done.role} to {done.login}")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    dsn = database(args, announce=True)
    name = set_events(dsn, args.state == "on")
    print(f"events are {args.state} in database {name}; restart running workers to apply it")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    dsn = database(args, announce=True)
    what = "counting what would go" if args.dry_run else "pruning"
    with ticking(f"{what}: data older than {_age(args.older_than)}"):
        pruned = prune(dsn, args.older_than, dry_run=args.dry_run)
    print(
        f"{'would delete' if pruned.dry_run else 'deleted'} (older than {_age(args.older_than)}):"
    )
    for label, count in _counts(pruned):
        print(f"  {label:<18} {count:>8}")
    if pruned.dry_run:
        print("dry run: nothing was deleted")
    return EXIT_OK


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"\s*(\d+)\s*([smhdw])\s*")


def duration(text: str) -> timedelta:
    """Parse `30m`, `12h`, `7d`, `2w` (also `45s`) into a timedelta."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m, 12h, 7d or 2w (units s, m, h, d, w), got {text!r}"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _age(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}(s)"
    return f"{seconds} second(s)"


def _counts(pruned: Pruned) -> list[tuple[str, int]]:
    return [
        ("runs", pruned.runs),
        ("step states", pruned.step_states),
        ("step tasks", pruned.step_tasks),
        ("task attempts", pruned.task_attempts),
        ("queued messages", pruned.queued_messages),
        ("archived messages", pruned.archived_messages),
        ("workers", pruned.workers),
        ("events", pruned.events),
    ]


def _labels(state: MigrationStatus) -> list[str]:
    return [row.label for row in state.applied] + list(state.pending)


def cmd_embedded_status(args: argparse.Namespace) -> int:
    state = embedded.server_status()
    print(f"data directory: {state.directory}")
    if not state.initialised:
        print("state:          not created yet (the first command without a database creates it)")
        return EXIT_OK
    print(f"version:        PostgreSQL {state.version}")
    print(f"size:           {state.size_bytes / 1024 / 1024:.1f} MiB")
    if state.running:
        print(f"state:          running, pid {state.pid}")
        print(f"socket:         {state.socket_dir} (port {state.port})")
    else:
        print("state:          stopped")
    if not embedded.is_installed():
        print(
            f"note:           the embedded server package is not installed ({embedded.INSTALL_HINT})"
        )
    return EXIT_OK


def cmd_embedded_stop(args: argparse.Namespace) -> int:
    with ticking("stopping the embedded PostgreSQL"):
        before = embedded.stop_server()
    if before.running:
        print(f"stopped the embedded PostgreSQL (pid {before.pid}) in {before.directory}")
    else:
        print(f"the embedded PostgreSQL in {before.directory} is not running")
    return EXIT_OK
