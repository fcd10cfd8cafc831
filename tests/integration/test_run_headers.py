"""Run headers: `pgflow.start_flow_with_headers` keeps them with the run in the run's own
transaction, they go with the run, only the start path writes them (the roles cannot write the
table, nor the headers of a run that exists), and `Client.start` / `AsyncClient.start` store
what the `pgflow_run_headers` hook gives, asked in the caller's context, and send nothing new
when no plugin implements it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
from contract_helpers import Conn, one, rows, scalar
from psycopg.types.json import Jsonb
from test_security import (
    CLIENT_LOGIN,
    WORKER_LOGIN,
    _arm_shadow_types,
    _arm_temp_tables,
    _connect,
    _login_dsn,
)

from pgflow import AsyncClient, Client, plugins
from pgflow.client import _SQL
from pgflow.hooks import hookimpl

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def worker_login(conn: Conn, db_dsn: str) -> str:
    return _login_dsn(conn, db_dsn, WORKER_LOGIN, "pgflow_worker")


@pytest.fixture
def client_login(conn: Conn, db_dsn: str) -> str:
    return _login_dsn(conn, db_dsn, CLIENT_LOGIN, "pgflow_client")


@pytest.fixture
def flow(conn: Conn) -> str:
    conn.execute("select pgflow.create_flow('rh_flow')")
    conn.execute("select pgflow.add_step('rh_flow', 'only')")
    return "rh_flow"


def headers_of(conn: Conn, run_id: Any) -> Any:
    found = rows(conn, "select headers from pgflow.run_headers where run_id = %s", (run_id,))
    return found[0]["headers"] if found else None


def start_with_headers(conn: Conn, headers: Any, run_id: Any = None) -> Any:
    return scalar(
        conn,
        "select run_id from pgflow.start_flow_with_headers('rh_flow', '{}', %s, %s)",
        (headers, run_id),
    )


# -- the SQL --------------------------------------------------------------------------------------


def test_headers_are_kept_in_the_transaction_that_creates_the_run(
    conn: Conn, db_dsn: str, flow: str
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as starter:
        with starter.transaction():
            run_id = start_with_headers(starter, Jsonb({"traceparent": TRACEPARENT}))
            assert headers_of(starter, run_id) == {"traceparent": TRACEPARENT}
            # nothing of it is visible to others before the commit
            assert rows(conn, "select 1 from pgflow.runs where run_id = %s", (run_id,)) == []
            assert headers_of(conn, run_id) is None
        assert headers_of(conn, run_id) == {"traceparent": TRACEPARENT}
        # the run itself is what start_flow makes: its task is queued
        task = one(conn, "select status from pgflow.step_tasks where run_id = %s", (run_id,))
        assert task["status"] == "queued"

        # a rolled back start keeps neither the run nor its headers
        with pytest.raises(RuntimeError, match="roll back"), starter.transaction():
            rolled_back = start_with_headers(starter, Jsonb({"a": "b"}))
            raise RuntimeError("roll back")
    assert rows(conn, "select 1 from pgflow.runs where run_id = %s", (rolled_back,)) == []
    assert headers_of(conn, rolled_back) is None


@pytest.mark.parametrize("headers", [None, {}])
def test_no_headers_keep_nothing_and_the_run_starts(conn: Conn, flow: str, headers: Any) -> None:
    run_id = start_with_headers(conn, None if headers is None else Jsonb(headers))
    assert one(conn, "select status from pgflow.runs where run_id = %s", (run_id,)) == {
        "status": "started"
    }
    assert scalar(conn, "select count(*) from pgflow.run_headers") == 0


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (["a"], "headers must be a JSON object of strings, got a JSON array"),
        (
            {"a": "x", "n": 1},
            'header "n" must have a non-empty name and a string value, got a JSON number',
        ),
        ({"": "x"}, 'header "" must have a non-empty name and a string value, got a JSON string'),
        ({"big": "x" * 9000}, "headers must be at most 8192 bytes as JSON text, got 9011"),
    ],
)
def test_bad_headers_are_refused_and_no_run_is_created(
    conn: Conn, flow: str, headers: Any, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        start_with_headers(conn, Jsonb(headers))
    assert caught.value.diag.message_primary == message
    assert scalar(conn, "select count(*) from pgflow.runs") == 0


def test_headers_go_with_their_run(conn: Conn, flow: str) -> None:
    pruned = start_with_headers(conn, Jsonb({"k": "pruned"}))
    kept = start_with_headers(conn, Jsonb({"k": "kept"}))
    conn.execute("select pgflow.cancel_run(%s)", (pruned,))
    conn.execute("select pgflow.prune_data_older_than('0 seconds')")
    assert headers_of(conn, pruned) is None
    assert headers_of(conn, kept) == {"k": "kept"}  # still started: not pruned
    conn.execute("select pgflow.delete_flow_and_data('rh_flow')")
    assert scalar(conn, "select count(*) from pgflow.run_headers") == 0


@pytest.mark.parametrize("login", ["worker_login", "client_login"])
def test_roles_read_headers_and_write_them_only_by_starting_a_run(
    conn: Conn, flow: str, login: str, request: pytest.FixtureRequest
) -> None:
    existing = start_with_headers(conn, Jsonb({"who": "owner"}))
    with _connect(request.getfixturevalue(login)) as other:
        assert headers_of(other, existing) == {"who": "owner"}
        for statement in (
            "insert into pgflow.run_headers values (gen_random_uuid(), '{}')",
            'update pgflow.run_headers set headers = \'{"who": "me"}\'',
            "delete from pgflow.run_headers",
            "truncate pgflow.run_headers",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="run_headers"):
                other.execute(statement)
        # a run that exists keeps its headers: starting it again fails before anything is kept
        with pytest.raises(psycopg.errors.UniqueViolation) as caught:
            start_with_headers(other, Jsonb({"who": "me"}), existing)
        assert caught.value.diag.constraint_name == "runs_pkey"
        # a new run may carry headers, as it may be started at all
        started = start_with_headers(other, Jsonb({"who": "me"}))
        assert headers_of(other, started) == {"who": "me"}
    assert headers_of(conn, existing) == {"who": "owner"}


def test_a_client_login_with_traps_armed_starts_a_run_with_headers(
    conn: Conn, flow: str, client_login: str
) -> None:
    with _connect(client_login) as attacker:
        _arm_shadow_types(attacker)
        _arm_temp_tables(attacker)
        run_id = start_with_headers(attacker, Jsonb({"traceparent": TRACEPARENT}))
    assert headers_of(conn, run_id) == {"traceparent": TRACEPARENT}


# -- the hook, through the clients -----------------------------------------------------------------

# what the caller has set when it starts a run; the hook must see it
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("CALLER", default="nobody")


class TraceHeaders:
    @hookimpl
    def pgflow_run_headers(self, flow_slug: str) -> Mapping[str, str] | None:
        return {"traceparent": TRACEPARENT, "caller": f"{CALLER.get()}@{flow_slug}"}


class MoreHeaders:
    """Gives a header the other plugin gives too, one that is no string, and one of its own."""

    @hookimpl
    def pgflow_run_headers(self) -> Mapping[str, Any]:
        return {"caller": "overridden?", "count": 3, "tenant": "acme"}


class NoHeaders:
    @hookimpl
    def pgflow_run_headers(self) -> None:
        return None


class Broken:
    @hookimpl
    def pgflow_run_headers(self) -> Mapping[str, str]:
        raise RuntimeError("broken plugin")


@pytest.fixture
def only_these(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`only_these(*plugins)`: from now on, those plugins alone (and the builtins)."""
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()

    def register(*found: object) -> None:
        plugins.reset_plugin_manager()
        for plugin in found:
            plugins.get_plugin_manager().register(plugin, name=type(plugin).__name__)

    yield register
    plugins.reset_plugin_manager()


class Recording(Client):
    """A Client that remembers the statements it sent."""

    sent: list[str]

    def _fetch(self, query: Any) -> list[dict[str, Any]]:
        self.sent = [*getattr(self, "sent", []), query.sql]
        return super()._fetch(query)


def test_without_an_implementation_start_sends_start_flow_as_before(
    conn: Conn, db_dsn: str, flow: str, only_these: Any
) -> None:
    only_these()
    assert plugins.run_headers(flow) == {}
    with Recording(db_dsn) as client:
        run_id = client.start(flow, {})
    assert _SQL.START in client.sent and _SQL.START_WITH_HEADERS not in client.sent
    assert headers_of(conn, run_id) is None


def test_start_keeps_the_merged_headers_asked_in_the_callers_context(
    conn: Conn, db_dsn: str, flow: str, only_these: Any, caplog: pytest.LogCaptureFixture
) -> None:
    only_these(Broken(), NoHeaders(), TraceHeaders(), MoreHeaders())
    token = CALLER.set("sync")
    try:
        with caplog.at_level(logging.WARNING, logger="pgflow.plugins"), Client(db_dsn) as client:
            run_id = client.start(flow, {})
    finally:
        CALLER.reset(token)
    # newest plugin first: MoreHeaders' "caller" wins; its number is left out with a warning
    assert headers_of(conn, run_id) == {
        "caller": "overridden?",
        "tenant": "acme",
        "traceparent": TRACEPARENT,
    }
    assert "header 'count' = 3 left out" in caplog.text
    assert "plugin 'Broken' failed in pgflow_run_headers" in caplog.text

    async def start_async() -> str:
        CALLER.set("async")
        async with AsyncClient(db_dsn) as client:
            return await client.start(flow, {})

    only_these(TraceHeaders())
    async_run = asyncio.run(start_async())
    assert headers_of(conn, async_run) == {"traceparent": TRACEPARENT, "caller": "async@rh_flow"}


def test_an_idempotent_start_with_headers_returns_the_run_and_keeps_its_headers(
    conn: Conn, db_dsn: str, flow: str, only_these: Any
) -> None:
    only_these(TraceHeaders())
    run_id = str(uuid.uuid4())
    with Client(db_dsn) as client:
        assert client.start(flow, {"n": 1}, run_id=run_id) == run_id
        token = CALLER.set("again")
        try:
            assert client.start(flow, {"n": 1}, run_id=run_id) == run_id
        finally:
            CALLER.reset(token)
    assert scalar(conn, "select count(*) from pgflow.runs") == 1
    assert headers_of(conn, run_id) == {"traceparent": TRACEPARENT, "caller": "nobody@rh_flow"}
