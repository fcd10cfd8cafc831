"""pgflow.db.migrations against a real PostgreSQL: pgmq install, ordering, idempotence, concurrency,
refusal of newer or edited schemas, and status."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from pgflow.db import connect, open_pool
from pgflow.db.migrations import (
    MIGRATION_LOCK_KEY,
    checksum,
    load_migrations,
    migrate,
    status,
)
from pgflow.errors import DatabaseUnavailable, MigrationError, SchemaTooNew

MIGRATIONS = {
    "0001_create_things.sql": "create table pgflow.things (id int primary key, note text);\n",
    # Applying this twice would violate the primary key: a second application cannot go unnoticed.
    "0002_add_thing.sql": "insert into pgflow.things values (1, '100% done; no escaping');\n",
}


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    directory.mkdir()
    for name, text in MIGRATIONS.items():
        (directory / name).write_text(text)
    return directory


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text, params).fetchall()


def execute(dsn: str, text: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)


def recorded(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "select version, name, checksum from pgflow.migrations order by version")


def pgmq_send_exists(dsn: str) -> bool:
    rows = query(
        dsn,
        "select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'pgmq' and p.proname = 'send')",
    )
    return bool(rows[0][0])


# Sessions of this database waiting for an advisory lock (advisory locks are per database).
WAITING = (
    "select count(*) from pg_locks where locktype = 'advisory' and not granted"
    " and database = (select oid from pg_database where datname = current_database())"
)


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.02)


# --- applying ------------------------------------------------------------------------------------


def test_applies_in_order_records_each_and_installs_pgmq(
    empty_db_dsn: str, migrations_dir: Path
) -> None:
    assert migrate(empty_db_dsn, migrations_dir=migrations_dir) == [
        "0001_create_things",
        "0002_add_thing",
    ]
    assert recorded(empty_db_dsn) == [
        (1, "create_things", checksum(MIGRATIONS["0001_create_things.sql"])),
        (2, "add_thing", checksum(MIGRATIONS["0002_add_thing.sql"])),
    ]
    assert query(empty_db_dsn, "select id, note from pgflow.things") == [
        (1, "100% done; no escaping")
    ]
    assert pgmq_send_exists(empty_db_dsn)
    state = status(empty_db_dsn, migrations_dir=migrations_dir)
    assert state.pgmq_installed_as in ("extension", "sql")
    assert state.pgmq_version not in (None, "unknown")
    assert state.up_to_date


def test_running_twice_changes_nothing(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    before = query(empty_db_dsn, "select version, applied_at from pgflow.migrations")
    objects = "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('pgflow', 'pgmq')"
    objects_before = query(empty_db_dsn, objects)

    assert migrate(empty_db_dsn, migrations_dir=migrations_dir) == []

    assert query(empty_db_dsn, "select version, applied_at from pgflow.migrations") == before
    assert query(empty_db_dsn, objects) == objects_before
    assert query(empty_db_dsn, "select count(*) from pgflow.things") == [(1,)]


def test_new_migration_is_applied_on_the_next_run(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0003_add_another.sql").write_text("insert into pgflow.things values (2);")
    assert migrate(empty_db_dsn, migrations_dir=migrations_dir) == ["0003_add_another"]
    assert [row[0] for row in recorded(empty_db_dsn)] == [1, 2, 3]


def test_versions_are_ordered_numerically_not_by_name(empty_db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0010_second.sql").write_text("insert into pgflow.things values (10);")
    (tmp_path / "0002_first.sql").write_text("create table pgflow.things (id int primary key);")
    assert migrate(empty_db_dsn, migrations_dir=tmp_path) == ["0002_first", "0010_second"]


def test_failed_migration_leaves_nothing_behind(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0003_broken.sql").write_text(
        "create table pgflow.half_done (id int);\n\nselect * from pgflow.no_such_table;\n"
    )
    with pytest.raises(MigrationError) as caught:
        migrate(empty_db_dsn, migrations_dir=migrations_dir)
    message = str(caught.value)
    assert "0003_broken.sql failed at line 3" in message
    assert "no_such_table" in message
    assert query(empty_db_dsn, "select to_regclass('pgflow.half_done')") == [(None,)]
    assert [row[0] for row in recorded(empty_db_dsn)] == [1, 2]

    # The lock was released and the fixed file goes through.
    (migrations_dir / "0003_broken.sql").write_text("create table pgflow.half_done (id int);")
    assert migrate(empty_db_dsn, migrations_dir=migrations_dir) == ["0003_broken"]


def test_package_migrations_are_all_recorded(db_dsn: str) -> None:
    shipped = load_migrations()
    assert shipped[0].label == "0001_baseline"  # read from pgflow/db/sql/migrations
    assert [(v, n, c) for v, n, c in recorded(db_dsn)] == [
        (m.version, m.name, m.checksum) for m in shipped
    ]
    assert status(db_dsn).up_to_date


# --- concurrency -----------------------------------------------------------------------------------


def test_concurrent_migrations_apply_each_migration_once(
    empty_db_dsn: str, migrations_dir: Path
) -> None:
    """Two migrators start while the lock is taken, so both really wait and then race for it."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db_dsn, migrations_dir=migrations_dir))
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(empty_db_dsn, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: holder.execute(WAITING).fetchone() == (2,), "both migrators to wait on the lock"
        )
        holder.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == [[], ["0001_create_things", "0002_add_thing"]]
    assert [row[0] for row in recorded(empty_db_dsn)] == [1, 2]
    assert query(empty_db_dsn, "select count(*) from pgflow.things") == [(1,)]
    assert pgmq_send_exists(empty_db_dsn)


def test_two_cli_processes_migrating_at_once_both_succeed(
    empty_db_dsn: str, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Real processes with the shipped migrations; the advisory lock serialises them."""
    with psycopg.connect(empty_db_dsn, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        outcomes: list[subprocess.CompletedProcess[str]] = []
        threads = [
            threading.Thread(
                target=lambda: outcomes.append(run_pgflow("db", "migrate", "--dsn", empty_db_dsn))
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: holder.execute(WAITING).fetchone() == (2,), "both CLIs to wait")
        holder.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        for thread in threads:
            thread.join(timeout=180)
    assert [p.returncode for p in outcomes] == [0, 0], [p.stderr for p in outcomes]
    assert sum("up to date" in p.stdout for p in outcomes) == 1
    assert all("waiting for another pgflow migration" in p.stdout for p in outcomes)
    shipped = load_migrations()
    assert [row[0] for row in recorded(empty_db_dsn)] == [m.version for m in shipped]


# --- refusals ---------------------------------------------------------------------------------------


def test_database_from_a_newer_pgflow_is_refused(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0002_add_thing.sql").unlink()
    with pytest.raises(SchemaTooNew) as caught:
        migrate(empty_db_dsn, migrations_dir=migrations_dir)
    assert "database migrated by a newer pgflow (version 2); upgrade pgflow-py" in str(caught.value)
    assert caught.value.database_version == 2
    assert caught.value.package_version == 1
    state = status(empty_db_dsn, migrations_dir=migrations_dir)
    assert state.schema_too_new
    assert not state.up_to_date


def test_edited_migration_is_refused(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0001_create_things.sql").write_text(
        "create table pgflow.things (id bigint primary key, note text);\n"
    )
    with pytest.raises(MigrationError, match=r"0001_create_things\.sql differs"):
        migrate(empty_db_dsn, migrations_dir=migrations_dir)
    assert status(empty_db_dsn, migrations_dir=migrations_dir).modified == ("0001_create_things",)


def test_line_endings_do_not_count_as_an_edit(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    path = migrations_dir / "0001_create_things.sql"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert migrate(empty_db_dsn, migrations_dir=migrations_dir) == []


def test_applied_migration_missing_from_the_package_is_refused(
    empty_db_dsn: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_more.sql").write_text("select 1;")
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0002_add_thing.sql").unlink()
    with pytest.raises(MigrationError, match="0002_add_thing, which this pgflow-py does not ship"):
        migrate(empty_db_dsn, migrations_dir=migrations_dir)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["1_short.sql"], "unexpected migration file name '1_short.sql'"),
        (["0001_Upper.sql"], "unexpected migration file name"),
        (["0001_a.sql", "0001_b.sql"], "two migrations share version 1"),
        (["0000_zero.sql"], "start at 1"),
    ],
)
def test_badly_named_migration_files_are_refused(
    tmp_path: Path, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("select 1;")
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "0001_only.sql").write_text("select 1;")
    assert [m.label for m in load_migrations(tmp_path)] == ["0001_only"]


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "nope")


# --- pgmq ---------------------------------------------------------------------------------------------


def test_existing_sql_install_of_pgmq_is_kept(empty_db_dsn: str, migrations_dir: Path) -> None:
    from pgmq.install import install_pgmq_from_sql

    with psycopg.connect(empty_db_dsn) as conn:
        install_pgmq_from_sql(conn=conn)
    migrate(empty_db_dsn, migrations_dir=migrations_dir)  # would fail if it installed pgmq again
    state = status(empty_db_dsn, migrations_dir=migrations_dir)
    assert (state.pgmq_installed_as, state.pgmq_version) == ("sql", "unknown")


def test_pgmq_without_message_headers_is_refused(empty_db_dsn: str, migrations_dir: Path) -> None:
    execute(
        empty_db_dsn,
        "create schema pgmq;"
        " create type pgmq.message_record as (msg_id bigint);"
        " create function pgmq.send(text) returns int language sql as 'select 1'",
    )
    with pytest.raises(MigrationError, match=r"too old: pgflow needs pgmq 1\.5 or newer"):
        migrate(empty_db_dsn, migrations_dir=migrations_dir)


def test_migrated_database_can_use_pgmq(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select pgmq.create('pgflow_migrate_probe')")
    msg_id = conn.execute(
        "select * from pgmq.send('pgflow_migrate_probe', '{\"a\": 1}')"
    ).fetchone()
    assert msg_id is not None
    read = conn.execute(
        "select msg_id, message from pgmq.read('pgflow_migrate_probe', 30, 1)"
    ).fetchall()
    assert read == [(msg_id[0], {"a": 1})]


# --- status -------------------------------------------------------------------------------------------


def test_status_of_an_empty_database_changes_nothing(
    empty_db_dsn: str, migrations_dir: Path
) -> None:
    state = status(empty_db_dsn, migrations_dir=migrations_dir)
    assert state.applied == ()
    assert state.pending == ("0001_create_things", "0002_add_thing")
    assert (state.pgmq_installed_as, state.pgmq_version) == (None, None)
    assert not state.up_to_date
    assert query(empty_db_dsn, "select to_regnamespace('pgflow'), to_regnamespace('pgmq')") == [
        (None, None)
    ]


def test_status_lists_applied_and_pending(empty_db_dsn: str, migrations_dir: Path) -> None:
    migrate(empty_db_dsn, migrations_dir=migrations_dir)
    (migrations_dir / "0003_later.sql").write_text("select 1;")
    state = status(empty_db_dsn, migrations_dir=migrations_dir)
    assert [a.label for a in state.applied] == ["0001_create_things", "0002_add_thing"]
    assert all(a.applied_at.tzinfo is not None for a in state.applied)
    assert state.pending == ("0003_later",)
    assert state.server_version.split(".")[0].isdigit()


def test_status_never_shows_the_password(db_dsn: str) -> None:
    given = psycopg.conninfo.conninfo_to_dict(db_dsn)
    password = str(given.get("password") or "pgflow-test-Secret-42")
    with_password = psycopg.conninfo.make_conninfo(db_dsn, password=password)
    try:
        state = status(with_password)
    except Exception as exc:  # a server that checks passwords rejects our made-up one
        if "password" in str(exc):
            pytest.skip("the test server checks passwords and PGFLOW_TEST_DSN has none")
        raise
    assert password not in repr(state)
    assert "password=***" in state.database


# --- connections (pgflow.db, which migrate and status use) ------------------------------------------


def test_connect_failure_is_one_clear_line() -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        connect("postgresql://someone:hunter22@127.0.0.1:1/nowhere")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot connect to PostgreSQL at postgresql://someone:***@127.0.0.1:1"
    )
    assert "hunter22" not in message


def test_connect_sets_application_name(db_dsn: str) -> None:
    with connect(db_dsn) as conn:
        assert conn.execute("show application_name").fetchone() == ("pgflow",)
    with connect(db_dsn, application_name="mine") as conn:
        assert conn.execute("show application_name").fetchone() == ("mine",)


def test_pool_opens_and_serves(db_dsn: str) -> None:
    with open_pool(db_dsn, min_size=1, max_size=2, name="probe") as pool, pool.connection() as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_pool_to_unreachable_server_raises_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable, match="Connection refused"):
        open_pool("postgresql://someone@127.0.0.1:1/nowhere", open_timeout=1)
