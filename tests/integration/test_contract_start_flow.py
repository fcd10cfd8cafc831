"""Contract sections 4 and 6: start_flow, its run and step states, tasks and messages."""

from __future__ import annotations

import uuid

import pytest
from contract_helpers import (
    Conn,
    assert_recent,
    assert_visible_after,
    define_flow,
    expect_error,
    get_run,
    jsonb,
    map_step,
    one,
    queue_messages,
    rows,
    scalar,
    server_clock,
    single,
    start_flow,
    step_states,
    tasks,
)


def test_single_step_flow(conn: Conn) -> None:
    define_flow(conn, "solo", [single("only")])
    run = start_flow(conn, "solo", {"user": 7})
    assert run["flow_slug"] == "solo"
    assert run["status"] == "started"
    assert run["input"] == {"user": 7}
    assert run["remaining_steps"] == 1
    assert run["output"] is None
    assert isinstance(run["run_id"], uuid.UUID)
    assert_recent(conn, run["started_at"])
    assert run["completed_at"] is None and run["failed_at"] is None
    assert get_run(conn, run["run_id"]) == run

    state = step_states(conn, run["run_id"])["only"]
    assert state["status"] == "started"
    assert state["flow_slug"] == "solo"
    assert (state["initial_tasks"], state["remaining_tasks"], state["remaining_deps"]) == (1, 1, 0)
    assert_recent(conn, state["started_at"])

    (only_task,) = tasks(conn, run["run_id"])
    assert only_task["step_slug"] == "only"
    assert only_task["task_index"] == 0
    assert only_task["status"] == "queued"
    assert only_task["attempts_count"] == 0
    assert only_task["requeued_count"] == 0
    assert only_task["message_id"] is not None
    assert_recent(conn, only_task["queued_at"])


def test_message_body_is_exactly_the_task_address(conn: Conn) -> None:
    define_flow(conn, "addressed", [single("only")])
    run = start_flow(conn, "addressed", {})
    (only_task,) = tasks(conn, run["run_id"])
    messages = queue_messages(conn, "addressed")
    assert list(messages) == [only_task["message_id"]]
    assert messages[only_task["message_id"]]["message"] == {
        "flow_slug": "addressed",
        "run_id": str(run["run_id"]),
        "step_slug": "only",
        "task_index": 0,
    }


def test_chain_starts_only_its_root(conn: Conn) -> None:
    define_flow(conn, "chain", [single("a"), single("b", "a"), single("c", "b")])
    run = start_flow(conn, "chain", {"n": 1})
    assert run["remaining_steps"] == 3
    states = step_states(conn, run["run_id"])
    assert {slug: s["status"] for slug, s in states.items()} == {
        "a": "started",
        "b": "created",
        "c": "created",
    }
    assert {slug: s["remaining_deps"] for slug, s in states.items()} == {"a": 0, "b": 1, "c": 1}
    assert {slug: s["initial_tasks"] for slug, s in states.items()} == {"a": 1, "b": 1, "c": 1}
    # remaining_tasks stays NULL until a step starts
    assert states["b"]["remaining_tasks"] is None and states["c"]["remaining_tasks"] is None
    assert states["b"]["started_at"] is None
    assert [(t["step_slug"], t["status"]) for t in tasks(conn, run["run_id"])] == [("a", "queued")]
    assert len(queue_messages(conn, "chain")) == 1


def test_two_roots_both_start(conn: Conn) -> None:
    define_flow(conn, "fork", [single("left"), single("right"), single("join", "left", "right")])
    run = start_flow(conn, "fork", {})
    states = step_states(conn, run["run_id"])
    assert states["left"]["status"] == states["right"]["status"] == "started"
    assert states["join"]["remaining_deps"] == 2
    bodies = sorted(m["message"]["step_slug"] for m in queue_messages(conn, "fork").values())
    assert bodies == ["left", "right"]


def test_root_map_gets_one_task_per_element(conn: Conn) -> None:
    define_flow(conn, "fan", [map_step("each")])
    run = start_flow(conn, "fan", [10, 20, 30])
    state = step_states(conn, run["run_id"])["each"]
    assert state["status"] == "started"
    assert (state["initial_tasks"], state["remaining_tasks"]) == (3, 3)
    found = tasks(conn, run["run_id"], "each")
    assert [t["task_index"] for t in found] == [0, 1, 2]
    assert all(t["status"] == "queued" for t in found)
    messages = queue_messages(conn, "fan")
    assert sorted(messages) == sorted(t["message_id"] for t in found)
    for found_task in found:
        body = messages[found_task["message_id"]]["message"]
        assert body == {
            "flow_slug": "fan",
            "run_id": str(run["run_id"]),
            "step_slug": "each",
            "task_index": found_task["task_index"],
        }


@pytest.mark.parametrize(
    ("flow_input", "json_type"),
    [
        ("null", "null"),
        ('{"items": [1, 2]}', "object"),
        ('"1,2,3"', "string"),
        ("3", "number"),
        ("true", "boolean"),
    ],
)
def test_root_map_rejects_non_array_input(conn: Conn, flow_input: str, json_type: str) -> None:
    define_flow(conn, "needs_array", [map_step("each")])
    expect_error(
        conn,
        "select * from pgflow.start_flow('needs_array', %s::jsonb)",
        (flow_input,),
        "needs_array",
        json_type,
    )
    assert scalar(conn, "select count(*) from pgflow.runs") == 0
    assert queue_messages(conn, "needs_array") == {}


def test_root_map_rejects_sql_null_input(conn: Conn) -> None:
    define_flow(conn, "needs_array_too", [map_step("each")])
    expect_error(
        conn,
        "select * from pgflow.start_flow('needs_array_too', null::jsonb)",
        None,
        "needs_array_too",
        "null",
    )
    assert scalar(conn, "select count(*) from pgflow.runs") == 0


def test_non_map_flow_accepts_any_json_input(conn: Conn) -> None:
    define_flow(conn, "anything", [single("a")])
    for value in ([1, 2], "text", 5, None, {"k": "v"}):
        run = start_flow(conn, "anything", value)
        assert run["input"] == value


def test_dependent_map_has_no_task_count_until_parent_completes(conn: Conn) -> None:
    define_flow(conn, "later_map", [single("list"), map_step("each", "list")])
    run = start_flow(conn, "later_map", {})
    state = step_states(conn, run["run_id"])["each"]
    assert state["status"] == "created"
    assert state["initial_tasks"] is None
    assert state["remaining_tasks"] is None
    assert state["remaining_deps"] == 1
    assert tasks(conn, run["run_id"], "each") == []


def test_caller_given_run_id(conn: Conn) -> None:
    define_flow(conn, "mine", [single("a")])
    chosen = uuid.uuid4()
    run = one(
        conn,
        "select * from pgflow.start_flow(flow_slug => 'mine', input => '{}'::jsonb, run_id => %s)",
        (chosen,),
    )
    assert run["run_id"] == chosen
    (only_task,) = tasks(conn, chosen)
    assert queue_messages(conn, "mine")[only_task["message_id"]]["message"]["run_id"] == str(chosen)


def test_generated_run_ids_differ(conn: Conn) -> None:
    define_flow(conn, "many", [single("a")])
    first = start_flow(conn, "many", {})
    second = start_flow(conn, "many", {})
    assert first["run_id"] != second["run_id"]


def test_step_states_cover_every_step(conn: Conn) -> None:
    define_flow(
        conn,
        "wide",
        [single("a"), single("b"), map_step("c", "a"), single("d", "b", "c"), map_step("e")],
    )
    run = start_flow(conn, "wide", [1])
    states = step_states(conn, run["run_id"])
    assert set(states) == {"a", "b", "c", "d", "e"}
    assert all(s["flow_slug"] == "wide" for s in states.values())
    assert {slug: s["remaining_deps"] for slug, s in states.items()} == {
        "a": 0,
        "b": 0,
        "c": 1,
        "d": 2,
        "e": 0,
    }
    assert {slug: s["initial_tasks"] for slug, s in states.items()} == {
        "a": 1,
        "b": 1,
        "c": None,
        "d": 1,
        "e": 1,
    }
    assert run["remaining_steps"] == 5


def test_flow_without_steps_completes_at_once(conn: Conn) -> None:
    define_flow(conn, "nothing", [])
    run = start_flow(conn, "nothing", {"k": 1})
    # the returned row is the run as start_flow left it
    assert run == get_run(conn, run["run_id"])
    assert run["status"] == "completed"
    assert run["remaining_steps"] == 0
    assert run["output"] is None
    assert_recent(conn, run["completed_at"])


def test_start_delay_delays_first_message(conn: Conn) -> None:
    define_flow(conn, "patient", [single("later", start_delay=120), single("now")])
    before = server_clock(conn)
    run = start_flow(conn, "patient", {})
    after = server_clock(conn)
    by_step = {t["step_slug"]: t["message_id"] for t in tasks(conn, run["run_id"])}
    assert_visible_after(conn, "patient", by_step["later"], 120, before, after)
    assert_visible_after(conn, "patient", by_step["now"], 0, before, after)
    visible = rows(conn, "select msg_id from pgmq.read('patient', 30, 10)")
    assert [m["msg_id"] for m in visible] == [by_step["now"]]


def test_start_ready_steps_again_adds_nothing(conn: Conn) -> None:
    define_flow(conn, "no_dupes", [single("a"), map_step("b")])
    run = start_flow(conn, "no_dupes", [1, 2])
    before = tasks(conn, run["run_id"])
    conn.execute("select pgflow.start_ready_steps(%s)", (run["run_id"],))
    assert tasks(conn, run["run_id"]) == before
    assert len(queue_messages(conn, "no_dupes")) == 3


def test_maybe_complete_run_leaves_unfinished_run(conn: Conn) -> None:
    define_flow(conn, "unfinished", [single("a")])
    run = start_flow(conn, "unfinished", {})
    conn.execute("select pgflow.maybe_complete_run(%s)", (run["run_id"],))
    assert get_run(conn, run["run_id"])["status"] == "started"


# ---------------------------------------------------------------------------------------------
# start_flow_with_states / get_run_with_states


def test_start_flow_with_states_shape(conn: Conn) -> None:
    define_flow(conn, "stateful", [single("a"), single("b", "a")])
    chosen = uuid.uuid4()
    result = scalar(
        conn,
        "select pgflow.start_flow_with_states(flow_slug => 'stateful', input => %s, run_id => %s)",
        (jsonb({"x": 1}), chosen),
    )
    assert set(result) == {"run", "steps"}
    assert result["run"]["run_id"] == str(chosen)
    assert result["run"]["status"] == "started"
    assert result["run"]["input"] == {"x": 1}
    assert result["run"]["remaining_steps"] == 2
    steps = {s["step_slug"]: s for s in result["steps"]}
    assert set(steps) == {"a", "b"}
    assert steps["a"]["status"] == "started"
    assert steps["b"]["status"] == "created"
    assert steps["b"]["remaining_deps"] == 1


def test_get_run_with_states_matches_tables(conn: Conn) -> None:
    define_flow(conn, "inspect", [single("a"), map_step("b", "a")])
    run = start_flow(conn, "inspect", {"k": "v"})
    result = scalar(conn, "select pgflow.get_run_with_states(run_id => %s)", (run["run_id"],))
    expected_run = scalar(
        conn, "select to_jsonb(r) from pgflow.runs r where run_id = %s", (run["run_id"],)
    )
    expected_steps = [
        r["j"]
        for r in rows(
            conn,
            "select to_jsonb(s) as j from pgflow.step_states s where run_id = %s",
            (run["run_id"],),
        )
    ]
    assert result["run"] == expected_run
    assert sorted(result["steps"], key=lambda s: s["step_slug"]) == sorted(
        expected_steps, key=lambda s: s["step_slug"]
    )


def test_start_flow_with_states_agrees_with_get_run_with_states(conn: Conn) -> None:
    define_flow(conn, "agree", [single("a")])
    started = scalar(conn, "select pgflow.start_flow_with_states('agree', '{}'::jsonb)")
    fetched = scalar(
        conn, "select pgflow.get_run_with_states(%s::uuid)", (started["run"]["run_id"],)
    )
    assert fetched["run"] == started["run"]

    def slug(state: dict[str, object]) -> str:
        return str(state["step_slug"])

    assert sorted(fetched["steps"], key=slug) == sorted(started["steps"], key=slug)
