"""Serializers: a flow names one (recorded with the flow, so clients and workers agree), its
run input, handler inputs and outputs go through it both ways, and what it writes stays plain
JSON for SQL. A worker refuses a flow whose serializer is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import serializer_plugin
from contract_helpers import Conn, rows
from worker_helpers import CONCURRENCY, POLL_INTERVAL, Mode, RunningWorker, modes

from pgflow.client import Client
from pgflow.errors import PluginError
from pgflow.flow import Flow
from pgflow.plugins.manager import available_serializers, get_plugin_manager
from pgflow.worker import Worker

WHEN = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1)))

flow = Flow("ser_roundtrip", serializer=serializer_plugin.NAME)


@flow.step()
def shift(value: Any) -> dict[str, Any]:
    when = value["when"]
    return {"when": when + timedelta(days=1), "got": type(when).__name__}


@flow.step(depends_on=[shift])
def after(deps: Any) -> dict[str, Any]:
    return {"again": deps["shift"]["when"], "got": type(deps["shift"]["when"]).__name__}


@pytest.fixture(autouse=True)
def tagged() -> Iterator[None]:
    manager = get_plugin_manager()
    manager.register(serializer_plugin, name="test-tagged-datetimes")
    try:
        yield
    finally:
        manager.unregister(name="test-tagged-datetimes")


def _worker(dsn: str, mode: Mode, flows: list[Flow], **options: Any) -> Worker:
    return Worker(
        flows,
        dsn=dsn,
        executor=mode.executor,
        per_task=mode.per_task,
        concurrency=CONCURRENCY[mode.executor],
        poll_interval=POLL_INTERVAL,
        install_signal_handlers=False,
        **options,
    )


@modes(Mode("thread"), Mode("asyncio"), Mode("thread", per_task=True))
def test_a_value_round_trips_through_the_flows_serializer(
    db_dsn: str, conn: Conn, mode: Mode
) -> None:
    assert serializer_plugin.NAME in available_serializers()
    running = RunningWorker(_worker(db_dsn, mode, [flow]))
    running.start()
    try:
        with Client(db_dsn) as client:
            run = running.finish(client, client.start(flow, {"when": WHEN}))
            output = client.wait(run.run_id, timeout=10)
        # a client that knows the flow by its slug only reads the serializer the flow records
        with Client(db_dsn) as other:
            again = running.finish(other, other.start(flow.slug, {"when": WHEN}))
    finally:
        running.stop()
    assert run.status == "completed"
    expected = {"after": {"again": WHEN + timedelta(days=1), "got": "datetime"}}
    assert output == expected
    assert run.output == expected
    assert again.output == expected
    # stored as plain JSON that SQL can read
    (stored,) = rows(conn, "select input, output from pgflow.runs where run_id = %s", (run.run_id,))
    assert stored["input"] == {"when": {"$dt": WHEN.isoformat()}}
    assert stored["output"] == {
        "after": {"again": {"$dt": (WHEN + timedelta(days=1)).isoformat()}, "got": "datetime"}
    }
    (shifted,) = rows(
        conn,
        "select output from pgflow.step_states where run_id = %s and step_slug = 'shift'",
        (run.run_id,),
    )
    assert shifted["output"]["got"] == "datetime"  # the handler received a datetime
    assert rows(conn, "select flow_slug, serializer from pgflow.flow_serializers") == [
        {"flow_slug": flow.slug, "serializer": serializer_plugin.NAME}
    ]


def test_a_flow_without_a_serializer_records_none(db_dsn: str, conn: Conn) -> None:
    plain = Flow("ser_plain")

    @plain.step()
    def echo(value: Any) -> Any:
        return value

    with Client(db_dsn) as client:
        client.start(plain, {"a": 1})
    assert rows(conn, "select count(*) as n from pgflow.flow_serializers") == [{"n": 0}]


def test_a_worker_refuses_a_flow_whose_serializer_is_not_installed(db_dsn: str) -> None:
    missing = Flow("ser_missing", serializer="no-such-serializer")

    @missing.step()
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(PluginError) as caught:
        _worker(db_dsn, Mode("thread"), [missing])
    message = str(caught.value)
    assert message.startswith(
        "cannot serve flow 'ser_missing': unknown serializer 'no-such-serializer'; known "
        "serializers: msgspec"
    )
    assert serializer_plugin.NAME in message
    # a worker's default applies to the flows that name none
    unnamed = Flow("ser_unnamed")

    @unnamed.step()
    def same(value: Any) -> Any:
        return value

    with pytest.raises(
        PluginError, match="cannot serve flow 'ser_unnamed': unknown serializer 'nope'"
    ):
        _worker(db_dsn, Mode("thread"), [unnamed], serializer="nope")


def test_a_serializer_that_writes_no_json_fails_the_start_not_the_database(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(Exception, match="has no JSON form here"):
        client.start(flow, {"when": object()})
