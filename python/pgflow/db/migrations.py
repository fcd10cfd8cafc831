"""Bring a database up to the schema this pgflow ships: pgmq first, then numbered migrations.

The SQL lives in the package directory `pgflow/db/sql` (shipped inside the wheel), in two folders:

- `schema/`: the source of truth, one file per object (`NNNN_<kind>_<name>.sql`, e.g.
  `0810_function_complete_task.sql`; `load_schema`), numbered in an order in which the files can
  be applied to a database that has pgmq. Nothing applies them to a user's database: they are
  what a developer reads and edits.
- `migrations/`: what `migrate` applies, the files `NNNN_name.sql` in numeric order
  (`load_migrations`). `0001_baseline.sql` is the schema files concatenated; each later file is
  the delta that brings a database from the previous schema to the current one.
  `tests/integration/test_schema_matches_migrations.py` checks that both folders build the same
  catalog, so a schema file edited without its migration fails the tests.

Each migration runs in its own transaction together with the row that records it in
`pgflow.migrations(version, name, checksum, applied_at)`, so a migration is either fully applied
and recorded or not at all. A migration file must therefore not contain transaction control
(`begin`, `commit`) or statements that cannot run in a transaction (`create index
concurrently`). The schema `pgflow` and the table `pgflow.migrations` exist before the first
migration runs.

Everything `migrate` changes happens while it holds a session advisory lock on
`MIGRATION_LOCK_KEY` (advisory locks are per database), so several processes may call it at
once: one migrates, the others wait and then find nothing left to do. In pooled mode
(`PGFLOW_POOLED`, a pooler in transaction mode, where consecutive transactions may run on
different server connections and a session lock could be taken on one and released on another)
each transaction takes the lock for itself instead and checks again under it that its migration
is still unrecorded: several processes may then share the work, each migration still applied
once and in order.

pgmq comes from `create extension pgmq` when the server offers the extension, and otherwise from
the SQL-only build shipped by the `pgmq` package on PyPI; the latter is recorded as a comment on
schema `pgmq`, which is where `status` reads its version.

Released migrations never change: a file whose checksum differs from the one recorded raises
`MigrationError`, and a database that has versions newer than any file shipped raises
`SchemaTooNew`.

Everything else that uses the database (`Worker`, `Client`, `AsyncClient`, and so every `pgflow`
command) first compares the newest version applied (`SCHEMA_VERSION`, one cheap query, once per
worker or client) with the newest shipped (`check_schema`, `schema_problem`): a database that was
never migrated, or migrated by an older pgflow, raises `SchemaNotMigrated` saying to run
`pgflow db migrate`, instead of whatever a missing table or function would raise later.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from pgflow.db.connection import connect, describe_error, pooled
from pgflow.db.connection import scalar as _scalar
from pgflow.db.dsn import redact
from pgflow.errors import MigrationError, SchemaNotMigrated, SchemaTooNew

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # importlib.abc before Python 3.11

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = int.from_bytes(b"pgflowmg", "big")
"""Key of the advisory lock held while migrating (far outside the int4 range of keys
derived from `hashtext`, so it cannot collide with per-flow locks)."""

_WAITING = "waiting for another pgflow migration of this database to finish"

MIGRATION_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.sql$")
SCHEMA_FILE = re.compile(
    r"^(?P<number>\d{4})_(?:"
    r"(?P<kind>schema|extension|table|view|sequence|type|function|trigger)_(?P<name>[a-z0-9_]+)"
    r"|(?P<whole>roles|grants))\.sql$"
)
"""A schema file's name: `NNNN_<kind>_<name>.sql` for one object (`0200_table_flows.sql`,
`0810_function_complete_task.sql`: `<name>` is the object's name, overloads share a file), or
`NNNN_<kind>.sql` for what concerns the whole schema (`0900_roles.sql`, `0910_grants.sql`)."""
PGMQ_MIN_VERSION = "1.5"
_PGMQ_SQL_COMMENT = re.compile(r"^pgmq (?P<version>\S+) ")

_BOOKKEEPING_SQL = b"""
create schema if not exists pgflow;
create table if not exists pgflow.migrations (
    version int primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        """The file name without `.sql`, e.g. `0001_baseline`."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class AppliedMigration:
    """A row of `pgflow.migrations`."""

    version: int
    name: str
    checksum: str
    applied_at: datetime

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class MigrationStatus:
    """What `pgflow db status` shows. `database` never contains a password."""

    database: str
    server_version: str
    pgmq_version: str | None
    """None when pgmq is not installed; "unknown" for a SQL install pgflow did not make."""
    pgmq_installed_as: str | None
    """"extension", "sql", or None when pgmq is not installed."""
    applied: tuple[AppliedMigration, ...]
    pending: tuple[str, ...]
    """Labels of shipped migrations not applied yet."""
    unknown: tuple[AppliedMigration, ...]
    """Applied migrations this pgflow does not ship (a newer or different build applied them)."""
    modified: tuple[str, ...]
    """Labels of applied migrations whose file has changed since."""
    newest_shipped: int

    @property
    def schema_too_new(self) -> bool:
        return any(m.version > self.newest_shipped for m in self.unknown)

    @property
    def up_to_date(self) -> bool:
        return (
            not self.pending
            and not self.unknown
            and not self.modified
            and self.pgmq_installed_as is not None
        )


Progress = Callable[[str], None]

SCHEMA_VERSION = "select coalesce(max(version), 0) as version from pgflow.migrations"
"""The newest migration applied to the database (0: none). On a database pgflow never migrated
it fails with an error that `is_missing_schema` recognizes."""


@functools.cache
def shipped_version() -> int:
    """The newest migration this pgflow ships (read from the package once per process)."""
    return max((m.version for m in load_migrations()), default=0)


def is_missing_schema(exc: BaseException) -> bool:
    """Whether `SCHEMA_VERSION` failed because the database has no pgflow schema at all."""
    return isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName))


def schema_problem(database_version: int, database: str) -> MigrationError | None:
    """Why a database whose newest applied migration is `database_version` (0: none) cannot be
    used by this pgflow, or None when it can. `database` names it (without a password)."""
    shipped = shipped_version()
    if database_version > shipped:
        return _too_new(database_version, shipped)
    if database_version == shipped:
        return None
    state = (
        "has no pgflow schema"
        if database_version == 0
        else f"has pgflow schema version {database_version}, older than this pgflow-py's {shipped}"
    )
    return SchemaNotMigrated(
        f"database {database} {state}: run `pgflow db migrate` (or pgflow.migrate(dsn)) first",
        database_version=database_version,
        package_version=shipped,
    )


def check_schema(conn: psycopg.Connection[Any], database: str) -> None:
    """Raise `SchemaNotMigrated` (or `SchemaTooNew`) unless the database behind `conn` has
    exactly the schema this pgflow ships. `database` names it (without a password)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
            row = cursor.execute(SCHEMA_VERSION).fetchone()
    except psycopg.Error as exc:
        if not is_missing_schema(exc):
            raise
        version = 0
    else:
        version = int(row[0]) if row is not None else 0
    problem = schema_problem(version, database)
    if problem is not None:
        raise problem


def migrate(
    conninfo: str, *, migrations_dir: Path | None = None, progress: Progress | None = None
) -> list[str]:
    """Install pgmq if needed and apply pending migrations; return the labels applied.

    Safe to run concurrently and repeatedly: a database that is up to date is left unchanged.
    `migrations_dir` replaces the package's `pgflow/db/sql/migrations` directory (tests use it).
    `progress` receives one line per step taken ("applied 0001_baseline"); by default they are
    logged at INFO.
    """
    report = progress if progress is not None else logger.info
    shipped = load_migrations(migrations_dir)
    with connect(conninfo) as conn, _session_lock(conn, report):
        locked = _MigrationLock(conn, report)
        with locked.transaction():
            conn.execute(_BOOKKEEPING_SQL)
        applied = _read_applied(conn)
        _check_compatible(applied, shipped)
        with locked.transaction():
            _ensure_pgmq(conn, report)
        done: list[str] = []
        for migration in shipped:
            if migration.version in applied:
                continue
            with locked.transaction():
                # another process may have applied it while we waited for the lock
                if _scalar(
                    conn,
                    "select exists (select from pgflow.migrations where version = %s)",
                    (migration.version,),
                ):
                    continue
                _apply(conn, migration)
            report(f"applied {migration.label}")
            done.append(migration.label)
        return done


def status(conninfo: str, *, migrations_dir: Path | None = None) -> MigrationStatus:
    """Describe the database's schema state without changing anything."""
    shipped = load_migrations(migrations_dir)
    with connect(conninfo, autocommit=True) as conn:
        server_version = str(_scalar(conn, "select current_setting('server_version')"))
        pgmq_installed_as, pgmq_version = _pgmq_state(conn)
        has_table = _scalar(conn, "select to_regclass('pgflow.migrations') is not null")
        applied = _read_applied(conn) if has_table else {}
    by_version = {m.version: m for m in shipped}
    return MigrationStatus(
        database=redact(conninfo),
        server_version=server_version,
        pgmq_version=pgmq_version,
        pgmq_installed_as=pgmq_installed_as,
        applied=tuple(applied.values()),
        pending=tuple(m.label for m in shipped if m.version not in applied),
        unknown=tuple(a for a in applied.values() if a.version not in by_version),
        modified=tuple(
            a.label
            for a in applied.values()
            if a.version in by_version and by_version[a.version].checksum != a.checksum
        ),
        newest_shipped=max(by_version, default=0),
    )


def load_migrations(directory: Path | Traversable | None = None) -> list[Migration]:
    """The migrations in `directory` (default: the package's `pgflow/db/sql/migrations`), in
    version order."""
    source = _sql_directory(directory, "migrations")
    found: dict[int, Migration] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"unexpected migration file name {entry.name!r} in {source}: migrations are "
                "named NNNN_name.sql (digits, underscore, lowercase letters/digits/underscores)"
            )
        migration = _read_migration(entry, int(match["version"]), match["name"])
        if migration.version in found:
            raise MigrationError(
                f"two migrations share version {migration.version} in {source}: "
                f"{found[migration.version].label}.sql and {entry.name}"
            )
        if migration.version == 0:
            raise MigrationError(f"migration versions start at 1, not 0: {entry.name} in {source}")
        found[migration.version] = migration
    return [found[v] for v in sorted(found)]


def load_schema(directory: Path | Traversable | None = None) -> list[tuple[str, str]]:
    """The schema files in `directory` (default: the package's `pgflow/db/sql/schema`) as
    (file name, text), in the order in which they are applied.

    Raises `MigrationError` for a `.sql` file whose name breaks `SCHEMA_FILE` and for two files
    with the same number.
    """
    source = _sql_directory(directory, "schema")
    found: dict[int, tuple[str, str]] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = SCHEMA_FILE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"unexpected schema file name {entry.name!r} in {source}: schema files are named "
                "NNNN_<kind>_<name>.sql (kind: schema, extension, table, view, sequence, type, "
                "function or trigger; name: the object's, in lowercase letters, digits and "
                "underscores) or NNNN_roles.sql, NNNN_grants.sql"
            )
        number = int(match["number"])
        if number in found:
            raise MigrationError(
                f"two schema files share number {match['number']} in {source}: "
                f"{found[number][0]} and {entry.name}"
            )
        found[number] = (entry.name, _read_sql(entry, "schema file"))
    return [found[n] for n in sorted(found)]


def checksum(text: str) -> str:
    """SHA-256 of a migration's text, insensitive to Windows line endings."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def _sql_directory(directory: Path | Traversable | None, folder: str) -> Traversable:
    """`directory`, or the package's `pgflow/db/sql/<folder>`; it must exist."""
    source: Traversable = (
        directory
        if directory is not None
        else importlib.resources.files("pgflow.db") / "sql" / folder
    )
    if not source.is_dir():
        hint = (
            "" if directory is not None else "; this pgflow-py installation is broken: reinstall it"
        )
        what = "migration" if folder == "migrations" else "schema"
        raise MigrationError(f"{what} directory {source} does not exist{hint}")
    return source


def _read_sql(entry: Traversable, what: str) -> str:
    try:
        return entry.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(f"{what} {entry.name} is not valid UTF-8: {exc}") from exc


def _read_migration(entry: Traversable, version: int, name: str) -> Migration:
    text = _read_sql(entry, "migration")
    return Migration(version=version, name=name, sql=text, checksum=checksum(text))


@contextmanager
def _session_lock(conn: psycopg.Connection[Any], report: Progress) -> Iterator[None]:
    """Hold the migration advisory lock for the session, releasing it however we leave (not in
    pooled mode: there `_MigrationLock` takes it in each transaction)."""
    if pooled():
        yield
        return
    if not _scalar(conn, "select pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)):
        report(_WAITING)
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    conn.commit()  # the lock is session-level: it survives this and every later transaction
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            conn.commit()


class _MigrationLock:
    """Transactions that hold the migration lock in pooled mode (else the session holds it);
    says once that it waits for another process."""

    def __init__(self, conn: psycopg.Connection[Any], report: Progress) -> None:
        self.conn = conn
        self.report = report
        self.waited = False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            if not pooled():
                yield
                return
            if not _scalar(
                self.conn, "select pg_try_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,)
            ):
                if not self.waited:
                    self.report(_WAITING)
                    self.waited = True
                self.conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            yield


def _read_applied(conn: psycopg.Connection[Any]) -> dict[int, AppliedMigration]:
    with conn.transaction():
        rows = conn.execute(
            "select version, name, checksum, applied_at from pgflow.migrations order by version"
        ).fetchall()
    return {row[0]: AppliedMigration(*row) for row in rows}


def _check_compatible(applied: dict[int, AppliedMigration], shipped: list[Migration]) -> None:
    by_version = {m.version: m for m in shipped}
    newest_shipped = max(by_version, default=0)
    newest_applied = max(applied, default=0)
    if newest_applied > newest_shipped:
        raise _too_new(newest_applied, newest_shipped)
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {row.label}, which this pgflow-py does not ship; "
                "it was applied by a different build of pgflow-py: install that one"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {migration.label}.sql differs from the one applied to this database "
                f"on {row.applied_at:%Y-%m-%d %H:%M} (checksum {migration.checksum[:12]} here, "
                f"{row.checksum[:12]} in the database); released migrations must not be edited: "
                "put the change in a new migration"
            )


def _too_new(database_version: int, package_version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"database migrated by a newer pgflow (version {database_version}); upgrade pgflow-py "
        f"(this one ships migrations up to version {package_version})",
        database_version=database_version,
        package_version=package_version,
    )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    try:
        with conn.transaction():
            # Bytes and no parameters: psycopg sends the whole file as one simple query, so it
            # may hold many statements and '%' needs no escaping.
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "insert into pgflow.migrations (version, name, checksum) values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.label}.sql failed{_where(exc, migration.sql)}: "
            f"{describe_error(exc)}; nothing of it was applied"
        ) from exc


def _where(exc: psycopg.Error, text: str) -> str:
    """' at line N' for an error with a position in the migration text."""
    position = exc.diag.statement_position
    if not position or not position.isdigit():
        return ""
    return f" at line {text[: int(position) - 1].count(chr(10)) + 1}"


def _pgmq_state(conn: psycopg.Connection[Any]) -> tuple[str | None, str | None]:
    """(how pgmq is installed, its version): ("extension", "1.5.1"), ("sql", ...), (None, None)."""
    version = _scalar(conn, "select extversion from pg_extension where extname = 'pgmq'")
    if version is not None:
        return "extension", str(version)
    installed = _scalar(
        conn,
        "select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'pgmq' and p.proname = 'send')",
    )
    if not installed:
        return None, None
    comment = _scalar(conn, "select obj_description('pgmq'::regnamespace, 'pg_namespace')")
    match = _PGMQ_SQL_COMMENT.match(str(comment or ""))
    return "sql", match["version"] if match else "unknown"


def _ensure_pgmq(conn: psycopg.Connection[Any], report: Progress) -> None:
    """Install pgmq unless it is there; fail clearly if the installed one is too old."""
    with conn.transaction():
        installed_as, _ = _pgmq_state(conn)
        available = _scalar(
            conn, "select default_version from pg_available_extensions where name = 'pgmq'"
        )
    if installed_as is None:
        if available is not None and _version_tuple(str(available)) < _version_tuple(
            PGMQ_MIN_VERSION
        ):
            raise MigrationError(
                f"the server offers pgmq {available} as an extension, which is too old: pgflow "
                f"needs pgmq {PGMQ_MIN_VERSION} or newer (1.5.1 is what hosted PostgreSQL "
                "services usually offer); install a newer pgmq on the server, or remove the old "
                "one so that pgflow installs pgmq's SQL-only build"
            )
        created = available is not None and _create_pgmq_extension(conn, report)
        if not created:
            _install_pgmq_sql(conn, report)
    with conn.transaction():
        has_headers = _scalar(
            conn,
            "select exists (select from pg_attribute a join pg_type t on t.typrelid = a.attrelid"
            " join pg_namespace n on n.oid = t.typnamespace where n.nspname = 'pgmq'"
            " and t.typname = 'message_record' and a.attname = 'headers' and not a.attisdropped)",
        )
        installed_as, version = _pgmq_state(conn)
    too_old = not has_headers or (
        version is not None
        and version != "unknown"
        and _version_tuple(version) < _version_tuple(PGMQ_MIN_VERSION)
    )
    if too_old:
        advice = (
            "run ALTER EXTENSION pgmq UPDATE as a superuser (after installing a newer pgmq on "
            "the server)"
            if installed_as == "extension"
            else "drop schema pgmq (and its queues) and run pgflow db migrate again to install "
            "pgmq's current SQL-only build"
        )
        raise MigrationError(
            f"pgmq {version} ({installed_as}) is too old: pgflow needs pgmq {PGMQ_MIN_VERSION} or "
            f"newer; {advice}"
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    """'1.5.1' -> (1, 5, 1); parts that are not numbers count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def _create_pgmq_extension(conn: psycopg.Connection[Any], report: Progress) -> bool:
    """Try `create extension pgmq`; False when we lack the privilege (use the SQL build then)."""
    try:
        with conn.transaction():
            conn.execute("create extension if not exists pgmq")
    except psycopg.errors.InsufficientPrivilege:
        report("not allowed to create extension pgmq; installing its SQL-only build instead")
        return False
    report("created extension pgmq")
    return True


def _install_pgmq_sql(conn: psycopg.Connection[Any], report: Progress) -> None:
    from pgmq.install import PGMQInstallError, install_pgmq_from_sql

    try:
        with conn.transaction():
            version = install_pgmq_from_sql(conn=conn)
            conn.execute(
                sql.SQL("comment on schema pgmq is {}").format(
                    sql.Literal(f"pgmq {version} (SQL-only build installed by pgflow)")
                )
            )
    except (PGMQInstallError, psycopg.Error) as exc:
        cause = exc.__cause__ if isinstance(exc, PGMQInstallError) and exc.__cause__ else exc
        raise MigrationError(
            f"installing pgmq from its SQL-only build failed: {describe_error(cause)}"
        ) from exc
    report(f"installed pgmq {version} (SQL-only build)")
