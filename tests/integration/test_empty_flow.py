"""A flow without steps is refused, with one message, wherever it would be compiled, served or
started: `Worker(...)`, `Client.start(flow)` and `AsyncClient.start(flow)`, and a start by slug
of a flow that was defined in SQL without steps. Nothing is written to the database."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from pgflow import AsyncClient, Client, ConfigError, Flow, FlowDefinitionError, Worker

Conn = psycopg.Connection[Any]

empty = Flow("ef_empty")

NO_STEPS = "flow 'ef_empty' has no steps: define at least one with @flow.step()"


def test_a_worker_refuses_a_flow_without_steps_when_it_is_built() -> None:
    # before it looks for a database: none is configured here
    with pytest.raises(FlowDefinitionError, match=NO_STEPS) as caught:
        Worker([empty], install_signal_handlers=False)
    assert caught.value.flow_slug == "ef_empty"


def test_client_start_refuses_a_flow_without_steps(db_dsn: str, conn: Conn) -> None:
    with Client(db_dsn) as client, pytest.raises(FlowDefinitionError, match=NO_STEPS):
        client.start(empty, {})

    async def main() -> None:
        async with AsyncClient(db_dsn) as client:
            with pytest.raises(FlowDefinitionError, match=NO_STEPS):
                await client.start(empty, {})

    asyncio.run(main())
    assert conn.execute("select count(*) from pgflow.flows").fetchone() == (0,)


def test_a_start_by_slug_refuses_a_flow_defined_without_steps(db_dsn: str, conn: Conn) -> None:
    conn.execute("select pgflow.create_flow('ef_empty')")
    with Client(db_dsn) as client, pytest.raises(FlowDefinitionError, match=NO_STEPS):
        client.start("ef_empty", {})
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)


def test_a_start_by_slug_of_an_unknown_flow_still_says_it_does_not_exist(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(ConfigError, match="'nowhere' does not exist"):
        client.start("nowhere", {})
