"""The database side: connections, DSN resolution, the embedded server, migrations, LISTEN, and
the SQL itself (`sql/schema/`, one file per object, and `sql/migrations/`, the deltas)."""

from __future__ import annotations

from pgflow.db.connection import (
    connect,
    connection_defaults,
    describe_error,
    open_pool,
    unavailable,
)

__all__ = ["connect", "connection_defaults", "describe_error", "open_pool", "unavailable"]
