"""Contract section 6: conditions (input patterns) resolved when steps become ready."""

from __future__ import annotations

from typing import Any

import pytest
from contract_helpers import (
    Conn,
    assert_recent,
    by_step,
    complete_claimed,
    complete_task,
    define_flow,
    drive,
    fail_task,
    get_run,
    map_step,
    read_and_start,
    register_worker,
    scalar,
    single,
    start_flow,
    step_state,
    step_states,
    task_statuses,
    tasks,
)


@pytest.mark.parametrize(
    ("flow_input", "met"),
    [
        ({"go": True}, True),
        ({"go": True, "extra": 1}, True),
        ({"go": False}, False),
        ({}, False),
        ({"nested": {"go": True}}, False),
    ],
)
def test_required_pattern_on_root_step_checks_run_input(
    conn: Conn, flow_input: dict[str, Any], met: bool
) -> None:
    define_flow(conn, "gate", [single("guarded", required={"go": True}), single("open")])
    run = start_flow(conn, "gate", flow_input)
    state = step_state(conn, run["run_id"], "guarded")
    if met:
        assert state["status"] == "started"
        assert [t["status"] for t in tasks(conn, run["run_id"], "guarded")] == ["queued"]
    else:
        assert state["status"] == "skipped"
        assert state["skip_reason"] == "condition_unmet"
        assert_recent(conn, state["skipped_at"])
        assert state["remaining_tasks"] is None
        assert tasks(conn, run["run_id"], "guarded") == []
    assert step_state(conn, run["run_id"], "open")["status"] == "started"


def test_nested_required_pattern_uses_containment(conn: Conn) -> None:
    define_flow(conn, "nested", [single("eu_only", required={"user": {"region": "eu"}})])
    met = start_flow(conn, "nested", {"user": {"region": "eu", "id": 1}})
    unmet = start_flow(conn, "nested", {"user": {"region": "us"}})
    assert step_state(conn, met["run_id"], "eu_only")["status"] == "started"
    assert step_state(conn, unmet["run_id"], "eu_only")["status"] == "skipped"


@pytest.mark.parametrize(
    ("flow_input", "met"),
    [
        ({"env": "dev"}, True),
        ({}, True),
        ({"env": "prod"}, False),
        ({"env": "prod", "force": True}, False),
    ],
)
def test_forbidden_pattern(conn: Conn, flow_input: dict[str, Any], met: bool) -> None:
    define_flow(conn, "forbid", [single("not_prod", forbidden={"env": "prod"})])
    run = start_flow(conn, "forbid", flow_input)
    expected = "started" if met else "skipped"
    assert step_state(conn, run["run_id"], "not_prod")["status"] == expected


@pytest.mark.parametrize(
    ("flow_input", "met"),
    [
        ({"deploy": True, "env": "dev"}, True),
        ({"deploy": True, "env": "prod"}, False),
        ({"deploy": False, "env": "dev"}, False),
    ],
)
def test_required_and_forbidden_together(conn: Conn, flow_input: dict[str, Any], met: bool) -> None:
    define_flow(
        conn,
        "both",
        [single("deploy", required={"deploy": True}, forbidden={"env": "prod"})],
    )
    run = start_flow(conn, "both", flow_input)
    expected = "started" if met else "skipped"
    assert step_state(conn, run["run_id"], "deploy")["status"] == expected


def test_dependent_step_pattern_checks_dependency_outputs(conn: Conn) -> None:
    define_flow(
        conn,
        "dep_gate",
        [single("check"), single("act", "check", required={"check": {"ok": True}})],
    )
    worker = register_worker(conn, "dep_gate")
    # the run input matching the pattern must not matter for a dependent step
    passing = start_flow(conn, "dep_gate", {"check": {"ok": False}})
    failing = start_flow(conn, "dep_gate", {"check": {"ok": True}})
    read_and_start(conn, "dep_gate", worker)
    complete_task(conn, passing["run_id"], "check", 0, {"ok": True, "score": 3})
    complete_task(conn, failing["run_id"], "check", 0, {"ok": False})
    assert step_state(conn, passing["run_id"], "act")["status"] == "started"
    skipped = step_state(conn, failing["run_id"], "act")
    assert (skipped["status"], skipped["skip_reason"]) == ("skipped", "condition_unmet")
    finished = get_run(conn, failing["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] is None


def test_unmet_skip_lets_children_continue_without_that_key(conn: Conn) -> None:
    define_flow(
        conn,
        "skip_gate",
        [
            single("maybe", required={"go": True}, when_unmet="skip"),
            single("always"),
            single("after", "maybe", "always"),
            single("only_after_maybe", "maybe"),
        ],
    )
    worker = register_worker(conn, "skip_gate")
    run = start_flow(conn, "skip_gate", {"go": False})
    states = step_states(conn, run["run_id"])
    assert states["maybe"]["status"] == "skipped"
    assert states["after"]["remaining_deps"] == 1
    assert states["only_after_maybe"]["status"] == "started"
    assert get_run(conn, run["run_id"])["remaining_steps"] == 3

    claimed = drive(conn, "skip_gate", worker, lambda record: {"saw": record["input"]})
    inputs = {r["step_slug"]: r["input"] for r in claimed}
    assert inputs["only_after_maybe"] == {}
    assert inputs["after"] == {"always": {"saw": {}}}
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert set(finished["output"]) == {"after", "only_after_maybe"}


def test_unmet_skip_cascade_skips_dependents(conn: Conn) -> None:
    define_flow(
        conn,
        "cascade_gate",
        [
            single("maybe", required={"go": True}, when_unmet="skip-cascade"),
            single("child", "maybe"),
            map_step("grandchild", "child"),
            single("other"),
        ],
    )
    worker = register_worker(conn, "cascade_gate")
    run = start_flow(conn, "cascade_gate", {"go": False})
    states = step_states(conn, run["run_id"])
    assert {slug: (s["status"], s["skip_reason"]) for slug, s in states.items()} == {
        "maybe": ("skipped", "condition_unmet"),
        "child": ("skipped", "dependency_skipped"),
        "grandchild": ("skipped", "dependency_skipped"),
        "other": ("started", None),
    }
    assert get_run(conn, run["run_id"])["remaining_steps"] == 1
    drive(conn, "cascade_gate", worker, by_step({"other": 1}))
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"other": 1}


def test_unmet_fail_fails_step_and_run(conn: Conn) -> None:
    define_flow(
        conn,
        "strict_gate",
        [
            single("sibling"),
            single("check"),
            single("strict", "check", required={"check": 1}, when_unmet="fail"),
        ],
    )
    worker = register_worker(conn, "strict_gate")
    run = start_flow(conn, "strict_gate", {})
    claimed = read_and_start(conn, "strict_gate", worker)
    complete_task(conn, run["run_id"], "check", 0, 2)
    state = step_state(conn, run["run_id"], "strict")
    assert state["status"] == "failed"
    assert state["error_message"] == "Condition not met"
    assert_recent(conn, state["failed_at"])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    assert_recent(conn, finished["failed_at"])
    assert tasks(conn, run["run_id"], "strict") == []
    assert task_statuses(conn, run["run_id"]) == {
        ("sibling", 0): "cancelled",
        ("check", 0): "completed",
    }
    assert len(claimed) == 2


def test_unmet_fail_on_root_step_fails_run_in_start_flow(conn: Conn) -> None:
    define_flow(
        conn,
        "root_strict",
        [single("strict", required={"ok": True}, when_unmet="fail"), single("other")],
    )
    run = start_flow(conn, "root_strict", {"ok": False})
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "failed"
    state = step_state(conn, run["run_id"], "strict")
    assert (state["status"], state["error_message"]) == ("failed", "Condition not met")
    # nothing of a failed run stays open
    assert all(status == "cancelled" for status in task_statuses(conn, run["run_id"]).values())


def test_cascade_resolve_conditions_return_value(conn: Conn) -> None:
    define_flow(conn, "resolver", [single("bad", max_attempts=1), single("good")])
    worker = register_worker(conn, "resolver")
    run = start_flow(conn, "resolver", {})
    result = scalar(
        conn, "select pgflow.cascade_resolve_conditions(run_id => %s)", (run["run_id"],)
    )
    assert result is True
    read_and_start(conn, "resolver", worker)
    fail_task(conn, run["run_id"], "bad", 0, "boom")
    result = scalar(conn, "select pgflow.cascade_resolve_conditions(%s)", (run["run_id"],))
    assert result is False


def test_skipped_dependency_is_absent_from_condition_subject(conn: Conn) -> None:
    # forbidding {"maybe": null} must tell "maybe produced null" from "maybe was skipped"
    define_flow(
        conn,
        "absent_key",
        [
            single("maybe", required={"go": True}),
            single("always"),
            single("after", "maybe", "always", forbidden={"maybe": None}),
        ],
    )
    worker = register_worker(conn, "absent_key")
    skipped_run = start_flow(conn, "absent_key", {"go": False})
    null_run = start_flow(conn, "absent_key", {"go": True})
    complete_claimed(conn, read_and_start(conn, "absent_key", worker), lambda record: None)
    assert step_state(conn, skipped_run["run_id"], "maybe")["status"] == "skipped"
    assert step_state(conn, skipped_run["run_id"], "after")["status"] == "started"
    after_null = step_state(conn, null_run["run_id"], "after")
    assert (after_null["status"], after_null["skip_reason"]) == ("skipped", "condition_unmet")
