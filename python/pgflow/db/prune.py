"""Deleting old data: `prune` (and `pgflow db prune`) calls `pgflow.prune_data_older_than`.

The SQL function does the work in one transaction and returns what it deleted per kind; see
docs/sql-api.md. Only the owner of schema `pgflow` (or a superuser) may call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import psycopg

from pgflow.db.connection import connect, scalar
from pgflow.errors import ConfigError, MigrationError, PgflowError


@dataclass(frozen=True)
class Pruned:
    """What was deleted (or, for a dry run, what would have been), per kind."""

    runs: int
    step_states: int
    step_tasks: int
    task_attempts: int
    """Ended attempts of the pruned runs' tasks (pgflow.task_attempts)."""
    queued_messages: int
    """Messages of pruned runs still in a flow's queue."""
    archived_messages: int
    workers: int
    """Workers whose last heartbeat is older than the cutoff."""
    events: int
    """Kept events (pgflow.events) older than the cutoff, those of the pruned runs among them."""
    dry_run: bool

    @property
    def total(self) -> int:
        return (
            self.runs
            + self.step_states
            + self.step_tasks
            + self.task_attempts
            + self.queued_messages
            + self.archived_messages
            + self.workers
            + self.events
        )


def prune(dsn: str, older_than: timedelta, *, dry_run: bool = False) -> Pruned:
    """Delete finished runs (with their step states, tasks, attempts and queued messages), workers,
    archived queue messages and kept events older than `older_than`.

    `dry_run` runs the same deletion in a transaction that is rolled back, so the counts are
    exactly what a real prune would delete at that moment (the rows it touches stay locked
    until then).
    """
    if older_than < timedelta(0):
        raise ConfigError(f"older_than must not be negative, got {older_than}")
    with connect(dsn) as conn:
        try:
            counts = scalar(conn, "select pgflow.prune_data_older_than(%s)", (older_than,))
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
            raise MigrationError(
                f"database {conn.info.dbname!r} has no pgflow.prune_data_older_than: run "
                "`pgflow db migrate` first"
            ) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PgflowError(
                f"{conn.info.user!r} may not prune: only the owner of schema pgflow (or a "
                "superuser) may delete data; connect as that role"
            ) from exc
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    return Pruned(
        runs=int(counts["runs"]),
        step_states=int(counts["step_states"]),
        step_tasks=int(counts["step_tasks"]),
        task_attempts=int(counts["task_attempts"]),
        queued_messages=int(counts["queued_messages"]),
        archived_messages=int(counts["archived_messages"]),
        workers=int(counts["workers"]),
        events=int(counts["events"]),
        dry_run=dry_run,
    )
