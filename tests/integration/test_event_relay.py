"""The event relay (docs/events.md): one relaying worker per database, events in id order from
the stored cursor, delivered once across relays, taken over when a relay goes away, a warning
when the database keeps no events, a slow sink that drops and counts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
import worker_flows
from contract_helpers import (
    Conn,
    by_step,
    define_flow,
    drive,
    register_worker,
    rows,
    scalar,
    single,
    start_flow,
)
from psycopg import sql
from worker_helpers import BATCHED, running_worker, wait_until

from pgflow import plugins
from pgflow.client import Client
from pgflow.hooks import hookimpl
from pgflow.plugins.events import EventRelay

FAST = {"lease_seconds": 1, "poll_interval": 0.1}


class RecordingSink:
    """Records every event it gets, with the relay thread's name; may be made to block."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    @hookimpl
    def pgflow_event(self, event: Mapping[str, Any]) -> None:
        self.gate.wait()
        with self.lock:
            self.events.append(dict(event))

    def ids(self) -> list[int]:
        with self.lock:
            return [int(e["id"]) for e in self.events]


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingSink]:
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()
    recording = RecordingSink()
    plugins.get_plugin_manager().register(recording, name="recording-sink")
    yield recording
    recording.gate.set()
    plugins.reset_plugin_manager()


@pytest.fixture
def events_on(conn: Conn) -> None:
    """The database keeps events (for sessions opened from now on, and this one)."""
    dbname = conn.info.dbname
    conn.execute(
        sql.SQL("alter database {} set pgflow.events = 'on'").format(sql.Identifier(dbname))
    )
    conn.execute("set pgflow.events = 'on'")


def _kept_ids(conn: Conn) -> list[int]:
    return [r["id"] for r in rows(conn, "select id from pgflow.events order by id")]


def _run_some(conn: Conn, flow: str, runs: int) -> None:
    define_flow(conn, flow, [single("a"), single("b", "a")])
    worker = register_worker(conn, flow)
    for n in range(runs):
        start_flow(conn, flow, {"n": n})
    drive(conn, flow, worker, by_step({"a": 1, "b": 2}))


def _wait_turns(conn: Conn, turns: int) -> None:
    """Wait until the relay has taken `turns` more turns (each renews the lease)."""
    for _ in range(turns):
        seen = scalar(conn, "select max(updated_at) from pgflow.event_relay")
        wait_until(
            lambda seen=seen: (
                scalar(conn, "select max(updated_at) from pgflow.event_relay") != seen
            ),
            "another turn of the relay",
        )


def _cursor(conn: Conn) -> int:
    return int(scalar(conn, "select coalesce(max(last_id), 0) from pgflow.event_relay"))


@pytest.mark.usefixtures("events_on")
def test_events_kept_while_no_relay_ran_are_delivered_in_order(
    conn: Conn, db_dsn: str, sink: RecordingSink
) -> None:
    _run_some(conn, "before", 3)
    kept = _kept_ids(conn)
    assert len(kept) == 3 * 6
    relay = EventRelay(db_dsn, **FAST)
    relay.start()
    try:
        wait_until(lambda: sink.ids() == kept, "every kept event delivered in id order")
        wait_until(lambda: _cursor(conn) == kept[-1], "the cursor at the last event")
    finally:
        relay.stop()
    by_run: dict[str, list[str]] = {}
    for event in sink.events:
        assert event["flow_slug"] == "before"
        by_run.setdefault(event["run_id"], []).append(event["event_type"])
    assert all(
        types[0] == "run:started" and types[-1] == "run:completed" for types in by_run.values()
    )


@pytest.mark.usefixtures("events_on")
def test_two_relays_deliver_each_event_once_in_all(
    conn: Conn, db_dsn: str, sink: RecordingSink
) -> None:
    relays = [EventRelay(db_dsn, holder=name, **FAST) for name in ("first", "second")]
    for relay in relays:
        relay.start()
    try:
        _run_some(conn, "twice", 5)
        kept = _kept_ids(conn)
        wait_until(lambda: len(sink.ids()) >= len(kept), "every event delivered")
        wait_until(lambda: _cursor(conn) == kept[-1], "the cursor at the last event")
        assert sorted(sink.ids()) == kept  # none twice
        assert sum(relay.leading for relay in relays) == 1
    finally:
        for relay in relays:
            relay.stop()


@pytest.mark.usefixtures("events_on")
def test_a_relay_that_stops_is_taken_over_and_nothing_is_lost(
    conn: Conn, db_dsn: str, sink: RecordingSink
) -> None:
    first = EventRelay(db_dsn, holder="first", **FAST)
    first.start()
    wait_until(lambda: first.leading, "the first relay leading")
    second = EventRelay(db_dsn, holder="second", **FAST)
    second.start()
    try:
        _run_some(conn, "handover", 2)
        wait_until(lambda: len(sink.ids()) == len(_kept_ids(conn)), "the first events delivered")
        first.stop()
        _run_some(conn, "handover_after", 2)
        kept = _kept_ids(conn)
        wait_until(lambda: second.leading, "the second relay taking over")
        wait_until(lambda: len(sink.ids()) >= len(kept), "the later events delivered")
        assert sorted(sink.ids()) == kept
    finally:
        first.stop()
        second.stop()


@pytest.mark.usefixtures("events_on")
def test_a_dead_relay_is_taken_over_when_its_lease_runs_out(
    conn: Conn, db_dsn: str, sink: RecordingSink
) -> None:
    # A relay that died holds the lease (as a killed worker's would) and delivered nothing.
    conn.execute("select * from pgflow.event_relay_turn('default', 'dead', 2, 0)")
    _run_some(conn, "orphaned", 2)
    kept = _kept_ids(conn)
    relay = EventRelay(db_dsn, holder="alive", **FAST)
    relay.start()
    try:
        wait_until(lambda: sorted(sink.ids()) == kept, "the events delivered by the survivor")
        assert scalar(conn, "select holder from pgflow.event_relay") == "alive"
    finally:
        relay.stop()


@pytest.mark.usefixtures("events_on")
def test_an_open_transaction_holds_later_events_back_until_it_commits(
    conn: Conn, db_dsn: str, sink: RecordingSink
) -> None:
    define_flow(conn, "slow_writer", [single("a")])
    relay = EventRelay(db_dsn, **FAST)
    relay.start()
    try:
        with psycopg.connect(db_dsn) as writer:
            writer.execute("select pgflow.start_flow('slow_writer', '{}'::jsonb)")  # not committed
            start_flow(conn, "slow_writer", {})  # a larger id, committed
            later = _kept_ids(conn)[-1]
            _wait_turns(conn, 2)
            assert relay.leading
            assert sink.ids() == []  # the committed event waits for the smaller id
            writer.commit()
        kept = _kept_ids(conn)
        assert later in kept
        wait_until(lambda: sink.ids() == kept, "both events, in id order")
    finally:
        relay.stop()


def test_a_database_without_events_is_one_warning(
    conn: Conn, db_dsn: str, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    relay = EventRelay(db_dsn, **FAST)
    with caplog.at_level(logging.WARNING, logger="pgflow.events"):
        relay.start()
        try:
            wait_until(lambda: relay.leading, "the relay leading")
            _wait_turns(conn, 2)
        finally:
            relay.stop()
    warnings = [r.getMessage() for r in caplog.records if "does not keep events" in r.getMessage()]
    assert len(warnings) == 1
    assert "pgflow db events on" in warnings[0]


@pytest.mark.usefixtures("events_on")
def test_a_slow_sink_drops_and_counts(
    conn: Conn, db_dsn: str, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.gate.clear()  # the sink blocks: two events queued, one maybe in its hands, the rest dropped
    _run_some(conn, "slow_sink", 2)
    kept = _kept_ids(conn)
    relay = EventRelay(db_dsn, max_queued=2, **FAST)
    with caplog.at_level(logging.WARNING, logger="pgflow.events"):
        relay.start()
        try:
            wait_until(lambda: relay.read_upto == kept[-1], "every event read")
            dropped = relay.dropped
            assert len(kept) - 3 <= dropped <= len(kept) - 2
            assert relay.leading  # the lease is renewed all the same
            sink.gate.set()
            wait_until(
                lambda: len(sink.ids()) == len(kept) - dropped, "the queued events delivered"
            )
            assert sink.ids() == sorted(sink.ids())
            wait_until(lambda: _cursor(conn) == kept[-1], "the cursor past the dropped events")
        finally:
            relay.stop()
    assert any(
        "event sinks are too slow: 1 event(s) dropped" in r.getMessage() for r in caplog.records
    )
    assert any(f"{dropped} event(s) dropped in all" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("events_on")
def test_a_worker_with_a_sink_relays_the_events_of_its_runs(
    db_dsn: str, sink: RecordingSink
) -> None:
    mode = BATCHED[0]
    with running_worker([worker_flows.diamond], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, worker_flows.diamond, {"n": 3})
        wait_until(
            lambda: any(e["event_type"] == "run:completed" for e in sink.events),
            "run:completed delivered",
        )
    types = [e["event_type"] for e in sink.events if e["run_id"] == str(run.run_id)]
    assert types[0] == "run:started" and types[-1] == "run:completed"
    assert types.count("step:completed") == 4
    assert all(e["flow_slug"] == "wt_diamond" for e in sink.events)
    assert sink.ids() == sorted(sink.ids())
