"""A database that `pgflow db migrate` has not brought up to date is refused, up front and in
one line, by `Worker`, `Client` and `AsyncClient`: missing schema, older schema, newer schema."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pgflow import AsyncClient, Client, Flow, SchemaNotMigrated, SchemaTooNew, Worker
from pgflow.db.migrations import migrate, shipped_version

flow = Flow("sc_flow")


@flow.step()
def only(value: object) -> object:
    return value


@pytest.fixture
def older_db_dsn(db_dsn: str) -> str:
    """The full schema, but its newest migration is not recorded: an older pgflow's database."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("delete from pgflow.migrations where version = %s", (shipped_version(),))
    return db_dsn


def assert_says_migrate(error: SchemaNotMigrated, database_version: int) -> None:
    message = str(error)
    assert "\n" not in message
    assert "run `pgflow db migrate`" in message
    assert error.database_version == database_version
    assert error.package_version == shipped_version()


def test_client_refuses_an_unmigrated_database(empty_db_dsn: str) -> None:
    with Client(empty_db_dsn) as client:
        for call in (
            lambda: client.runs(),
            lambda: client.flows(),
            lambda: client.start("sc_flow", {}),
            lambda: client.get("00000000-0000-4000-8000-000000000000"),
            lambda: client.cancel("00000000-0000-4000-8000-000000000000"),
        ):
            with pytest.raises(SchemaNotMigrated) as caught:
                call()
            assert "has no pgflow schema" in str(caught.value)
            assert_says_migrate(caught.value, 0)


def test_client_refuses_an_older_schema(older_db_dsn: str) -> None:
    with Client(older_db_dsn) as client, pytest.raises(SchemaNotMigrated) as caught:
        client.runs()
    assert f"has pgflow schema version {shipped_version() - 1}, older than" in str(caught.value)
    assert_says_migrate(caught.value, shipped_version() - 1)


def test_client_refuses_a_newer_schema(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into pgflow.migrations (version, name, checksum) values (9999, 'future', 'x')"
        )
    with Client(db_dsn) as client, pytest.raises(SchemaTooNew, match="upgrade pgflow-py"):
        client.flows()


def test_async_client_refuses_an_unmigrated_database(empty_db_dsn: str) -> None:
    async def main() -> None:
        async with AsyncClient(empty_db_dsn) as client:
            with pytest.raises(SchemaNotMigrated) as caught:
                await client.runs()
            assert_says_migrate(caught.value, 0)

    asyncio.run(main())


def test_the_check_passes_once_the_database_is_migrated(empty_db_dsn: str) -> None:
    with Client(empty_db_dsn) as client:
        with pytest.raises(SchemaNotMigrated):
            client.flows()
        migrate(empty_db_dsn)
        # the same client asks again, and now finds the schema
        assert client.flows() == []


@pytest.mark.parametrize("which", ["empty", "older"])
def test_worker_refuses_an_unmigrated_database(
    which: str, empty_db_dsn: str, older_db_dsn: str
) -> None:
    dsn = empty_db_dsn if which == "empty" else older_db_dsn
    worker = Worker([flow], dsn=dsn, install_signal_handlers=False)
    with pytest.raises(SchemaNotMigrated) as caught:
        worker.run()
    assert_says_migrate(caught.value, 0 if which == "empty" else shipped_version() - 1)
    assert not worker.started.is_set()
