"""Run ids in `Client` and `AsyncClient`: a malformed id is a `RunNotFound`, never a raw SQL
error; `find_run_id` resolves a unique prefix and names the candidates of an ambiguous one; a
start with a run id that exists is idempotent for the same flow and input, a `RunConflict`
otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from pgflow import AsyncClient, Client, ConfigError, RunConflict, RunNotFound

Conn = psycopg.Connection[Any]

# two runs whose ids share their first 8 digits, and one more that shares only the first
TWIN_A = "abcd1234-0000-4000-8000-00000000000a"
TWIN_B = "abcd1234-0000-4000-8000-00000000000b"
LONER = "a0000000-0000-4000-8000-000000000000"


@pytest.fixture
def flows(conn: Conn) -> None:
    for slug in ("ri_one", "ri_two"):
        conn.execute("select pgflow.create_flow(%s)", (slug,))
        conn.execute("select pgflow.add_step(%s, 'only')", (slug,))
    for run_id in (TWIN_A, TWIN_B, LONER):
        conn.execute("select pgflow.start_flow('ri_one', '{}'::jsonb, %s)", (run_id,))


@pytest.mark.parametrize("bad", ["xyz", "abcd1234", "", "abcd1234-0000-4000-8000-00000000000g"])
def test_a_malformed_run_id_is_run_not_found(bad: str, db_dsn: str) -> None:
    with Client(db_dsn) as client:
        for call in (client.get, client.status, client.cancel, client.wait):
            with pytest.raises(RunNotFound, match="is not a run id: run ids are UUIDs"):
                call(bad)


def test_a_malformed_run_id_is_run_not_found_for_the_async_client(db_dsn: str) -> None:
    async def main() -> None:
        async with AsyncClient(db_dsn) as client:
            for call in (client.get, client.status, client.cancel, client.wait):
                with pytest.raises(RunNotFound, match="'xyz' is not a run id"):
                    await call("xyz")

    asyncio.run(main())


@pytest.mark.usefixtures("flows")
def test_a_unique_prefix_finds_its_run(db_dsn: str) -> None:
    with Client(db_dsn) as client:
        assert client.find_run_id("a0") == LONER
        assert client.find_run_id("ABCD1234-0000-4000-8000-00000000000A") == TWIN_A
        assert client.find_run_id(TWIN_B.replace("-", "")) == TWIN_B
        assert client.find_run_id(TWIN_A) == TWIN_A


@pytest.mark.usefixtures("flows")
def test_an_ambiguous_prefix_lists_its_candidates(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(RunNotFound) as caught:
        client.find_run_id("abcd1234")
    message = str(caught.value)
    assert message == (
        f"run id prefix 'abcd1234' is ambiguous: {TWIN_A}, {TWIN_B} start with it; give more "
        "of the id"
    )


@pytest.mark.usefixtures("flows")
def test_a_prefix_of_many_runs_lists_a_few(db_dsn: str, conn: Conn) -> None:
    for n in range(8):
        conn.execute(
            "select pgflow.start_flow('ri_one', '{}'::jsonb, %s)",
            (f"cccccccc-0000-4000-8000-00000000000{n}",),
        )
    with Client(db_dsn) as client, pytest.raises(RunNotFound) as caught:
        client.find_run_id("cc")
    assert str(caught.value).count("cccccccc-") == 5
    assert " and more start with it" in str(caught.value)


@pytest.mark.usefixtures("flows")
def test_a_prefix_of_no_run_and_a_prefix_that_cannot_be(db_dsn: str) -> None:
    with Client(db_dsn) as client:
        with pytest.raises(RunNotFound, match="no run id starts with 'ff'"):
            client.find_run_id("ff")
        missing = "ffffffff-0000-4000-8000-000000000000"
        with pytest.raises(RunNotFound, match=f"run {missing} does not exist"):
            client.find_run_id(missing)
        for bad in ("xyz", "", "a" * 33):
            with pytest.raises(RunNotFound, match="is not a run id nor the start of one"):
                client.find_run_id(bad)


@pytest.mark.usefixtures("flows")
def test_starting_an_existing_run_again_is_idempotent(db_dsn: str, conn: Conn) -> None:
    run_id = "11111111-0000-4000-8000-000000000000"
    with Client(db_dsn) as client:
        assert client.start("ri_one", {"a": 1, "b": [2]}, run_id) == run_id
        # the same input (in another key order: jsonb equality) returns the same run
        assert client.start("ri_one", {"b": [2], "a": 1}, run_id) == run_id
    assert conn.execute(
        "select count(*) from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone() == (1,)


@pytest.mark.usefixtures("flows")
def test_starting_a_run_id_taken_by_another_flow_or_input_is_a_conflict(db_dsn: str) -> None:
    async def main() -> None:
        async with AsyncClient(db_dsn) as client:
            with pytest.raises(RunConflict) as caught:
                await client.start("ri_one", {"other": True}, TWIN_A)
            assert str(caught.value) == (
                f"run {TWIN_A} already exists with another input; give another run id, or none "
                "for a new one"
            )
            with pytest.raises(RunConflict, match=f"run {TWIN_A} already exists of flow 'ri_one'"):
                await client.start("ri_two", {}, TWIN_A)
            # the same flow and input: the run that exists
            assert await client.start("ri_one", {}, TWIN_A) == TWIN_A

    asyncio.run(main())


def test_starting_with_a_malformed_run_id_says_so(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(ConfigError, match="'nope' is not a UUID"):
        client.start("ri_one", {}, "nope")
