"""Contract section 8: events, sent to realtime.send when the Supabase realtime schema exists."""

from __future__ import annotations

from typing import Any

from contract_helpers import (
    Conn,
    Row,
    by_step,
    complete_task,
    define_flow,
    drive,
    fail_task,
    get_run,
    install_fake_realtime,
    map_step,
    read_and_start,
    register_worker,
    scalar,
    sent_events,
    single,
    start_flow,
)

FIELDS = {
    "run:started": {"run_id", "flow_slug", "input", "status", "remaining_steps", "started_at"},
    "run:completed": {"run_id", "flow_slug", "status", "output", "completed_at"},
    "run:failed": {"run_id", "flow_slug", "status", "error_message", "failed_at"},
    "step:started": {
        "run_id",
        "step_slug",
        "status",
        "started_at",
        "remaining_tasks",
        "remaining_deps",
    },
    "step:completed": {"run_id", "step_slug", "status", "output", "completed_at"},
    "step:failed": {"run_id", "step_slug", "status", "error_message", "failed_at"},
    "step:skipped": {"run_id", "flow_slug", "step_slug", "status", "skip_reason", "skipped_at"},
}


def _names(events: list[Row]) -> list[str]:
    return [event["event"] for event in events]


def _payload(events: list[Row], name: str) -> dict[str, Any]:
    matching = [event["payload"] for event in events if event["event"] == name]
    assert len(matching) == 1, f"expected one {name!r} event, got {_names(events)}"
    payload: dict[str, Any] = matching[0]
    return payload


def _assert_well_formed(events: list[Row], run_id: Any) -> None:
    for event in events:
        payload = event["payload"]
        event_type = payload.get("event_type")
        assert event_type in FIELDS, f"unknown event_type in {payload}"
        missing = FIELDS[event_type] - set(payload)
        assert not missing, f"{event_type} payload lacks {sorted(missing)}: {payload}"
        assert payload["run_id"] == str(run_id)
        assert event["topic"] == f"pgflow:run:{run_id}"
        assert event["private"] is False
        # event name: run:<status> or step:<slug>:<status>
        status = event_type.split(":")[1]
        assert payload["status"] == status
        if event_type.startswith("run:"):
            assert event["event"] == f"run:{status}"
        else:
            assert event["event"] == f"step:{payload['step_slug']}:{status}"


def test_events_of_a_completed_run(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented", [single("a"), single("b", "a")])
    worker = register_worker(conn, "evented")
    run = start_flow(conn, "evented", {"hello": "world"})
    drive(conn, "evented", worker, by_step({"a": "A", "b": {"B": True}}))

    events = sent_events(conn, run["run_id"])
    assert _names(events) == [
        "run:started",
        "step:a:started",
        "step:a:completed",
        "step:b:started",
        "step:b:completed",
        "run:completed",
    ]
    _assert_well_formed(events, run["run_id"])

    started = _payload(events, "run:started")
    assert started["flow_slug"] == "evented"
    assert started["input"] == {"hello": "world"}
    assert started["remaining_steps"] == 2
    step_started = _payload(events, "step:a:started")
    assert (step_started["remaining_tasks"], step_started["remaining_deps"]) == (1, 0)
    assert _payload(events, "step:a:completed")["output"] == "A"
    assert _payload(events, "step:b:completed")["output"] == {"B": True}
    completed = _payload(events, "run:completed")
    assert completed["flow_slug"] == "evented"
    assert completed["output"] == {"b": {"B": True}}
    assert completed["output"] == get_run(conn, run["run_id"])["output"]
    # asking again does not complete the run twice
    conn.execute("select pgflow.maybe_complete_run(%s)", (run["run_id"],))
    assert _names(sent_events(conn, run["run_id"])).count("run:completed") == 1


def test_events_of_a_failed_run(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented_fail", [single("bad", max_attempts=1)])
    worker = register_worker(conn, "evented_fail")
    run = start_flow(conn, "evented_fail", {})
    read_and_start(conn, "evented_fail", worker)
    fail_task(conn, run["run_id"], "bad", 0, "kaboom")

    events = sent_events(conn, run["run_id"])
    names = _names(events)
    assert names[:2] == ["run:started", "step:bad:started"]
    assert sorted(names[2:]) == ["run:failed", "step:bad:failed"]
    _assert_well_formed(events, run["run_id"])
    assert _payload(events, "step:bad:failed")["error_message"] == "kaboom"
    failed = _payload(events, "run:failed")
    assert failed["flow_slug"] == "evented_fail"
    assert failed["failed_at"] is not None


def test_retry_sends_no_terminal_event(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented_retry", [single("flaky", max_attempts=2)])
    worker = register_worker(conn, "evented_retry")
    run = start_flow(conn, "evented_retry", {})
    read_and_start(conn, "evented_retry", worker)
    fail_task(conn, run["run_id"], "flaky", 0, "transient")
    assert _names(sent_events(conn, run["run_id"])) == ["run:started", "step:flaky:started"]


def test_skip_events_parent_before_child(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(
        conn,
        "evented_skip",
        [
            single("maybe", required={"go": True}, when_unmet="skip-cascade"),
            single("child", "maybe"),
            single("other"),
        ],
    )
    run = start_flow(conn, "evented_skip", {"go": False})
    events = sent_events(conn, run["run_id"])
    _assert_well_formed(events, run["run_id"])
    names = _names(events)
    assert names[0] == "run:started"
    assert set(names) == {
        "run:started",
        "step:maybe:skipped",
        "step:child:skipped",
        "step:other:started",
    }
    assert names.index("step:maybe:skipped") < names.index("step:child:skipped")
    maybe = _payload(events, "step:maybe:skipped")
    assert (maybe["flow_slug"], maybe["skip_reason"]) == ("evented_skip", "condition_unmet")
    assert _payload(events, "step:child:skipped")["skip_reason"] == "dependency_skipped"
    assert maybe["skipped_at"] is not None


def test_map_step_sends_one_started_and_one_completed_event(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented_map", [map_step("each")])
    worker = register_worker(conn, "evented_map")
    run = start_flow(conn, "evented_map", [1, 2, 3])
    drive(conn, "evented_map", worker, lambda record: record["input"] * 2)
    events = sent_events(conn, run["run_id"])
    assert _names(events) == [
        "run:started",
        "step:each:started",
        "step:each:completed",
        "run:completed",
    ]
    _assert_well_formed(events, run["run_id"])
    assert _payload(events, "step:each:started")["remaining_tasks"] == 3
    assert _payload(events, "step:each:completed")["output"] == [2, 4, 6]


def test_taskless_step_completion_is_an_event(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented_empty", [map_step("each"), map_step("more", "each")])
    run = start_flow(conn, "evented_empty", [])
    events = sent_events(conn, run["run_id"])
    assert _names(events) == [
        "run:started",
        "step:each:completed",
        "step:more:completed",
        "run:completed",
    ]
    _assert_well_formed(events, run["run_id"])
    assert _payload(events, "step:each:completed")["output"] == []


def test_events_of_concurrent_runs_go_to_their_own_topics(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "evented_many", [single("a")])
    worker = register_worker(conn, "evented_many")
    first = start_flow(conn, "evented_many", {"n": 1})
    second = start_flow(conn, "evented_many", {"n": 2})
    drive(conn, "evented_many", worker, by_step({"a": 0}))
    for run in (first, second):
        events = sent_events(conn, run["run_id"])
        _assert_well_formed(events, run["run_id"])
        assert len(events) == 4
    assert len(sent_events(conn)) == 8


def test_without_realtime_schema_nothing_fails(conn: Conn) -> None:
    assert scalar(conn, "select to_regnamespace('realtime') is null") is True
    define_flow(
        conn,
        "silent",
        [single("a"), single("b", "a", required={"a": 1}), single("c", max_attempts=1)],
    )
    worker = register_worker(conn, "silent")
    ok_run = start_flow(conn, "silent", {})
    read_and_start(conn, "silent", worker)
    complete_task(conn, ok_run["run_id"], "a", 0, {"x": 0})
    fail_task(conn, ok_run["run_id"], "c", 0, "fails quietly")
    assert get_run(conn, ok_run["run_id"])["status"] == "failed"
    define_flow(conn, "silent_ok", [single("a")])
    done = start_flow(conn, "silent_ok", {})
    drive(conn, "silent_ok", register_worker(conn, "silent_ok"), by_step({"a": 1}))
    assert get_run(conn, done["run_id"])["status"] == "completed"
