"""Turning kept events on or off for a database (`pgflow db events on|off`); see docs/events.md.

The switch is the database setting `pgflow.events` (`alter database ... set pgflow.events`):
sessions opened afterwards see it, so running workers keep the old value until they restart.
Off by default: keeping events costs about a sixth of the diamond benchmark's throughput
(docs/performance.md).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgflow.db.connection import connect
from pgflow.errors import PgflowError


def set_events(dsn: str, on: bool) -> str:
    """Set `pgflow.events` for the database `dsn` names; returns that database's name."""
    with connect(dsn, autocommit=True) as conn:
        name = conn.info.dbname
        try:
            conn.execute(
                sql.SQL("alter database {} set pgflow.events = {}").format(
                    sql.Identifier(name), sql.Literal("on" if on else "off")
                )
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PgflowError(
                f"{conn.info.user!r} may not change the settings of database {name!r}: connect "
                "as its owner (or a superuser)"
            ) from exc
    return name
