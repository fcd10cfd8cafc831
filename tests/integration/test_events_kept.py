"""Events kept in pgflow.events (docs/events.md): whole, in order per run, with ids and
flow_slug; a retried attempt's event; the relay's lease and cursor; pruning."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from contract_helpers import (
    Conn,
    Row,
    by_step,
    define_flow,
    drive,
    fail_task,
    install_fake_realtime,
    read_and_start,
    register_worker,
    rows,
    scalar,
    sent_events,
    single,
    start_flow,
)


def _events_on(conn: Conn) -> None:
    conn.execute("set pgflow.events = 'on'")


def _kept(conn: Conn, run_id: Any) -> list[Row]:
    return rows(conn, "select * from pgflow.events where run_id = %s order by id", (run_id,))


def test_events_are_off_unless_the_setting_says_on(conn: Conn) -> None:
    define_flow(conn, "quiet", [single("a")])
    run = start_flow(conn, "quiet", {})
    assert _kept(conn, run["run_id"]) == []


def test_every_event_is_kept_whole_in_order_with_its_flow_slug(conn: Conn) -> None:
    _events_on(conn)
    define_flow(conn, "kept", [single("a"), single("b", "a")])
    worker = register_worker(conn, "kept")
    big = "x" * 20_000  # far over NOTIFY's 8,000 bytes
    run = start_flow(conn, "kept", {"big": big})
    drive(conn, "kept", worker, by_step({"a": {"big": big}, "b": "done"}))

    kept = _kept(conn, run["run_id"])
    assert [(e["event_type"], e["payload"].get("step_slug")) for e in kept] == [
        ("run:started", None),
        ("step:started", "a"),
        ("step:completed", "a"),
        ("step:started", "b"),
        ("step:completed", "b"),
        ("run:completed", None),
    ]
    ids = [e["id"] for e in kept]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for event in kept:
        assert event["flow_slug"] == "kept"
        assert event["payload"]["flow_slug"] == "kept"
        assert event["payload"]["event_type"] == event["event_type"]
        assert event["payload"]["run_id"] == str(run["run_id"])
    assert kept[0]["payload"]["input"] == {"big": big}
    assert kept[2]["payload"]["output"] == {"big": big}
    assert "truncated" not in kept[2]["payload"]


def test_realtime_payloads_are_unchanged_when_events_are_on(conn: Conn) -> None:
    install_fake_realtime(conn)
    _events_on(conn)
    define_flow(conn, "both", [single("a")])
    worker = register_worker(conn, "both")
    run = start_flow(conn, "both", {})
    drive(conn, "both", worker, by_step({"a": 1}))
    sent = sent_events(conn, run["run_id"])
    step_started = next(e for e in sent if e["event"] == "step:a:started")
    assert "flow_slug" not in step_started["payload"]  # pgflow's shape, as before
    assert len(sent) == len(_kept(conn, run["run_id"]))


def test_an_attempt_that_will_be_retried_is_an_event(conn: Conn) -> None:
    install_fake_realtime(conn)
    _events_on(conn)
    define_flow(conn, "flaky", [single("f", max_attempts=3, base_delay=2)])
    worker = register_worker(conn, "flaky")
    run = start_flow(conn, "flaky", {})
    read_and_start(conn, "flaky", worker)
    fail_task(conn, run["run_id"], "f", 0, "transient")

    retrying = [e for e in _kept(conn, run["run_id"]) if e["event_type"] == "task:retrying"]
    assert len(retrying) == 1
    payload = retrying[0]["payload"]
    assert payload == {
        "event_type": "task:retrying",
        "run_id": str(run["run_id"]),
        "flow_slug": "flaky",
        "step_slug": "f",
        "task_index": 0,
        "status": "queued",
        "attempt": 1,
        "error_message": "transient",
        "retry_in_seconds": 4,  # base_delay * 2^attempt
    }
    # pgflow has no such event: realtime clients see what they saw before
    assert [e["event"] for e in sent_events(conn, run["run_id"])] == [
        "run:started",
        "step:f:started",
    ]


def test_prune_deletes_old_events(conn: Conn) -> None:
    _events_on(conn)
    define_flow(conn, "pruned", [single("a")])
    worker = register_worker(conn, "pruned")
    run = start_flow(conn, "pruned", {})
    drive(conn, "pruned", worker, by_step({"a": 1}))
    assert len(_kept(conn, run["run_id"])) == 4
    conn.execute("update pgflow.events set created_at = created_at - interval '2 days'")
    conn.execute(
        "update pgflow.runs set started_at = started_at - interval '2 days',"
        " completed_at = completed_at - interval '2 days'"
    )
    summary = scalar(conn, "select pgflow.prune_data_older_than(interval '1 day')")
    assert summary["events"] == 4
    assert _kept(conn, run["run_id"]) == []


# -- the relay's lease and cursor -----------------------------------------------------------------


def _turn(conn: Conn, holder: str, delivered: int = 0, lease: int = 5) -> Row | None:
    """The turn's row, or None when another holder has the lease."""
    found = rows(
        conn,
        "select * from pgflow.event_relay_turn('test', %s, %s, %s)",
        (holder, lease, delivered),
    )
    assert len(found) == 1
    return found[0] if found[0]["last_id"] is not None else None


def test_one_holder_at_a_time_and_the_cursor_moves_only_for_it(conn: Conn) -> None:
    first = _turn(conn, "a")
    assert first is not None and first["last_id"] == 0
    assert first["events_on"] is False
    _events_on(conn)
    assert scalar(conn, "select events_on from pgflow.event_relay_turn('test', 'b', 5, 0)")
    assert _turn(conn, "b", delivered=99) is None  # a's lease runs
    again = _turn(conn, "a", delivered=7)
    assert again is not None and again["last_id"] == 7
    conn.execute("select pgflow.release_event_relay('test', 'b', 50)")  # not b's to release
    assert _turn(conn, "b") is None
    conn.execute("select pgflow.release_event_relay('test', 'a', 9)")
    taken = _turn(conn, "b", delivered=1000)  # a newcomer's delivered count means nothing
    assert taken is not None and taken["last_id"] == 9


def test_an_expired_lease_is_taken_over(conn: Conn) -> None:
    assert _turn(conn, "a", lease=1) is not None
    conn.execute("update pgflow.event_relay set lease_until = now() - interval '1 second'")
    taken = _turn(conn, "b")
    assert taken is not None and taken["last_id"] == 0
    assert _turn(conn, "a") is None


def test_writers_still_running_are_listed(conn: Conn, db_dsn: str) -> None:
    define_flow(conn, "open", [single("a")])
    with psycopg.connect(db_dsn) as writer:
        writer.execute("set pgflow.events = 'on'")
        writer.execute("select pgflow.start_flow('open', '{}'::jsonb, %s)", (uuid.uuid4(),))
        turn = _turn(conn, "a")
        assert turn is not None
        assert len(turn["writers"]) == 1  # its event is not visible yet: do not read past it
        assert turn["last_assigned"] >= 1
        writer.rollback()
    turn = _turn(conn, "a")
    assert turn is not None and turn["writers"] == []


@pytest.mark.parametrize(("holder", "lease"), [("", 5), ("a", 0)])
def test_relay_turn_refuses_bad_arguments(conn: Conn, holder: str, lease: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        _turn(conn, holder, lease=lease)
