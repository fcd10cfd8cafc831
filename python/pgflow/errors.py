"""Exceptions raised by pgflow.

Every error pgflow raises on purpose derives from `PgflowError`, so callers (and the `pgflow`
command, which turns them into one `error: ...` line) can catch them in one place. Messages are
written for the person who has to act on them: what went wrong and what to do. They never contain
a database password.
"""

from __future__ import annotations


class PgflowError(Exception):
    """Base class of every error pgflow raises on purpose."""


class ConfigError(PgflowError):
    """The configuration (a DSN, an environment variable, an option) is invalid."""


class DatabaseUnavailable(PgflowError):
    """PostgreSQL could not be reached or refused the connection."""


class MigrationError(PgflowError):
    """The database schema could not be brought up to date, or does not match what we ship."""


class SchemaTooNew(MigrationError):
    """The database was migrated by a newer pgflow than this one."""

    def __init__(self, message: str, *, database_version: int, package_version: int) -> None:
        super().__init__(message)
        self.database_version = database_version
        self.package_version = package_version


class EmbeddedUnavailable(PgflowError):
    """The embedded PostgreSQL server is not installed or could not be started."""
