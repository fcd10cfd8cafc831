"""Connections to PostgreSQL: psycopg 3 connections and pools with clear failure messages.

`connect` and `open_pool` behave like `psycopg.connect` and `psycopg_pool.ConnectionPool`, except
that a server which cannot be reached raises `DatabaseUnavailable` with one line naming the
database (password removed) and the reason, and an unparsable DSN raises `ConfigError`. They also
default `connect_timeout` (so an unreachable host fails instead of hanging) and
`application_name` (so `pg_stat_activity` shows who is connected) unless the DSN, the
environment or the caller sets them.

Pooled mode (`PGFLOW_POOLED=1`) is for a DSN that goes through a pooler in transaction mode
(PgBouncer, Supavisor), where consecutive transactions of one client may run on different server
connections, so nothing may be left in the session: connections never prepare statements, the
worker leaves `synchronous_commit` alone, and LISTEN uses `PGFLOW_LISTEN_DSN` (a direct
connection) or nothing at all, the worker then polling (`listen_dsn`).
"""

from __future__ import annotations

import os
from typing import Any, overload

import psycopg
import psycopg.conninfo
from psycopg.rows import Row, RowFactory, TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from pgflow.db.dsn import redact, scrub
from pgflow.errors import ConfigError, DatabaseUnavailable, one_line

DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_APPLICATION_NAME = "pgflow"

POOLED_ENV = "PGFLOW_POOLED"
"""Set to 1 when the DSN goes through a pooler in transaction mode (see the module's text)."""
LISTEN_DSN_ENV = "PGFLOW_LISTEN_DSN"
"""A direct connection (not through the pooler) for LISTEN; without it a pooled worker polls."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def pooled() -> bool:
    """True when `PGFLOW_POOLED` says the database is reached through a transaction pooler."""
    return env_flag(POOLED_ENV, "when the database is reached through a pooler in transaction mode")


def env_flag(name: str, meaning: str) -> bool:
    """The yes/no environment variable `name`; `meaning` completes "set it to 1 ..." in the
    error for a value that is neither."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{name}={os.environ[name]!r} is not a yes/no value: set it to 1 {meaning}, else 0 or "
        "nothing"
    )


def listen_dsn(dsn: str) -> str | None:
    """Where to LISTEN for notifications meant for clients of `dsn`: `PGFLOW_LISTEN_DSN` when
    set, else `dsn` itself, except in pooled mode (a pooler in transaction mode hands the
    session that LISTENed to other clients between transactions): None, no listening."""
    direct = os.environ.get(LISTEN_DSN_ENV, "").strip()
    if direct:
        return direct
    return None if pooled() else dsn


def commit_asynchronously(conn: psycopg.Connection[Any]) -> None:
    """`synchronous_commit = off` for the rest of `conn`'s session, except in pooled mode, where
    the setting would stay on a server connection that other clients (and their results) get
    next: commits then stay synchronous."""
    if not pooled():
        conn.execute("set synchronous_commit = off")


@overload
def connect(
    dsn: str, *, row_factory: RowFactory[Row], autocommit: bool = False, **kwargs: Any
) -> psycopg.Connection[Row]: ...


@overload
def connect(
    dsn: str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.Connection[TupleRow]: ...


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection; raise `DatabaseUnavailable` / `ConfigError` instead of libpq errors.

    Keyword arguments go to `psycopg.connect` (libpq parameters such as `dbname`, or psycopg
    options such as `row_factory` and `prepare_threshold`).
    """
    params = connection_defaults(dsn, kwargs)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **params)
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"invalid PostgreSQL connection string {redact(dsn)}: {scrub(str(exc), dsn)}"
        ) from exc


def open_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    name: str | None = None,
    timeout: float = 30.0,
    open_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    **kwargs: Any,
) -> ConnectionPool[psycopg.Connection[TupleRow]]:
    """Open a `psycopg_pool.ConnectionPool`, waiting until its first connections work.

    `kwargs` are connection parameters (as for `connect`). `timeout` is how long `getconn()`
    waits for a free connection; `open_timeout` how long to wait for the server at start.
    """
    params = connection_defaults(dsn, kwargs)
    pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout,
        kwargs=params,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=open_timeout)
    except PoolTimeout:
        pool.close()
        # The pool only says it timed out; one direct attempt tells the user why.
        with connect(dsn, **params):
            pass
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact(dsn)}: no connection became ready within "
            f"{open_timeout:g} s"
        ) from None
    return pool


def connection_defaults(dsn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` plus pgflow's defaults for parameters that nobody else has set."""
    params = dict(kwargs)
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        given = {}  # psycopg.connect reports the parse error with its own message
    if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
        params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if "application_name" not in given and "PGAPPNAME" not in os.environ:
        params.setdefault("application_name", DEFAULT_APPLICATION_NAME)
    if pooled():
        # a statement prepared in one transaction may be gone (or another's) in the next
        params["prepare_threshold"] = None
    return params


def unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    """A `DatabaseUnavailable` for a failed connection to `dsn`, as one password-free line."""
    reason = describe_error(exc, dsn).removeprefix("connection failed: ")
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact(dsn)}: {reason}")


def scalar(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of `query` (None when it returns no row)."""
    row = conn.execute(query, params or None).fetchone()
    return None if row is None else row[0]


def describe_error(exc: BaseException, dsn: str | None = None) -> str:
    """One line describing a (psycopg) error, without passwords.

    libpq messages span several lines (a reason, then a hint); they are joined with "; ".
    """
    text = one_line(exc) or type(exc).__name__
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        text = f"{text} (SQLSTATE {exc.sqlstate})"
    return scrub(text, dsn) if dsn is not None else redact(text)
