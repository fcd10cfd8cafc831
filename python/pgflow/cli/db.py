"""`pgflow db`: install pgmq, apply migrations, show the database's state, grant the pgflow
roles."""

from __future__ import annotations

import argparse

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, add_group, database
from pgflow.db.dsn import redact, resolve_dsn
from pgflow.db.migrations import MigrationStatus, migrate, status
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


def _labels(state: MigrationStatus) -> list[str]:
    return [row.label for row in state.applied] + list(state.pending)
