"""Contract section 6: map steps fan out over arrays and fan back in, including empty arrays."""

from __future__ import annotations

from contract_helpers import (
    Conn,
    by_step,
    complete_task,
    define_flow,
    drive,
    get_run,
    map_chain,
    map_step,
    queue_messages,
    read_and_start,
    register_worker,
    single,
    start_flow,
    step_state,
    step_states,
    tasks,
)


def test_map_output_in_task_index_order_with_nulls_kept(conn: Conn) -> None:
    define_flow(conn, "ordered", [map_step("each")])
    worker = register_worker(conn, "ordered")
    run = start_flow(conn, "ordered", ["a", "b", "c", "d"])
    read_and_start(conn, "ordered", worker)
    # finish in reverse order: the output must still follow task_index
    complete_task(conn, run["run_id"], "each", 3, {"d": 4})
    complete_task(conn, run["run_id"], "each", 2, None)
    complete_task(conn, run["run_id"], "each", 1, "B")
    state = step_state(conn, run["run_id"], "each")
    assert (state["status"], state["remaining_tasks"]) == ("started", 1)
    assert state["output"] is None
    complete_task(conn, run["run_id"], "each", 0, [0])
    state = step_state(conn, run["run_id"], "each")
    assert state["status"] == "completed"
    assert state["output"] == [[0], "B", None, {"d": 4}]
    assert get_run(conn, run["run_id"])["output"] == {"each": [[0], "B", None, {"d": 4}]}


def test_dependent_map_learns_count_from_parent_array(conn: Conn) -> None:
    define_flow(conn, "learns", [single("list"), map_step("each", "list")])
    worker = register_worker(conn, "learns")
    run = start_flow(conn, "learns", {})
    read_and_start(conn, "learns", worker)
    complete_task(conn, run["run_id"], "list", 0, ["x", "y", "z"])
    state = step_state(conn, run["run_id"], "each")
    assert state["status"] == "started"
    assert (state["initial_tasks"], state["remaining_tasks"], state["remaining_deps"]) == (3, 3, 0)
    found = tasks(conn, run["run_id"], "each")
    assert [(t["task_index"], t["status"]) for t in found] == [
        (0, "queued"),
        (1, "queued"),
        (2, "queued"),
    ]
    messages = queue_messages(conn, "learns")
    assert sorted(m["message"]["task_index"] for m in messages.values()) == [0, 1, 2]


def test_map_over_map_learns_parent_task_count(conn: Conn) -> None:
    define_flow(conn, "map_map", [map_step("first"), map_step("second", "first")])
    worker = register_worker(conn, "map_map")
    run = start_flow(conn, "map_map", [1, 2, 3])
    assert step_state(conn, run["run_id"], "second")["initial_tasks"] is None
    for record in read_and_start(conn, "map_map", worker):
        complete_task(conn, run["run_id"], "first", record["task_index"], record["input"] + 100)
    state = step_state(conn, run["run_id"], "second")
    assert (state["status"], state["initial_tasks"]) == ("started", 3)
    drive(conn, "map_map", worker, lambda record: record["input"] * 2)
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"second": [202, 204, 206]}


def test_root_map_over_empty_array_completes_at_once(conn: Conn) -> None:
    define_flow(conn, "empty_root", [map_step("each")])
    run = start_flow(conn, "empty_root", [])
    state = step_state(conn, run["run_id"], "each")
    assert state["status"] == "completed"
    assert state["output"] == []
    assert state["initial_tasks"] == 0
    assert state["remaining_tasks"] == 0
    assert tasks(conn, run["run_id"]) == []
    assert queue_messages(conn, "empty_root") == {}
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"each": []}


def test_empty_root_map_feeding_map_chain_completes_at_once(conn: Conn) -> None:
    define_flow(conn, "empty_chain", [map_step("m0"), *map_chain("m0", 2)])
    run = start_flow(conn, "empty_chain", [])
    states = step_states(conn, run["run_id"])
    assert {slug: (s["status"], s["output"]) for slug, s in states.items()} == {
        "m0": ("completed", []),
        "m1": ("completed", []),
        "m2": ("completed", []),
    }
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["remaining_steps"] == 0
    assert finished["output"] == {"m2": []}


def test_single_step_producing_empty_array_completes_map_chain(conn: Conn) -> None:
    define_flow(conn, "empty_mid", [single("list"), *map_chain("list", 2)])
    worker = register_worker(conn, "empty_mid")
    run = start_flow(conn, "empty_mid", {})
    read_and_start(conn, "empty_mid", worker)
    complete_task(conn, run["run_id"], "list", 0, [])
    states = step_states(conn, run["run_id"])
    assert states["m1"]["status"] == "completed" and states["m1"]["output"] == []
    assert states["m2"]["status"] == "completed" and states["m2"]["output"] == []
    assert tasks(conn, run["run_id"], "m1") == [] and tasks(conn, run["run_id"], "m2") == []
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"m2": []}


def test_empty_map_feeds_single_step_an_empty_array(conn: Conn) -> None:
    define_flow(conn, "empty_then_single", [map_step("each"), single("summary", "each")])
    worker = register_worker(conn, "empty_then_single")
    run = start_flow(conn, "empty_then_single", [])
    (record,) = read_and_start(conn, "empty_then_single", worker)
    assert record["step_slug"] == "summary"
    assert record["input"] == {"each": []}
    complete_task(conn, run["run_id"], "summary", 0, "nothing to do")
    assert get_run(conn, run["run_id"])["output"] == {"summary": "nothing to do"}


def test_fan_out_and_fan_in(conn: Conn) -> None:
    define_flow(
        conn,
        "fan",
        [single("list"), map_step("square", "list"), single("total", "square")],
    )
    worker = register_worker(conn, "fan")
    run = start_flow(conn, "fan", {"n": 5})

    def handler(record: dict[str, object]) -> object:
        if record["step_slug"] == "list":
            return list(range(1, 6))
        if record["step_slug"] == "square":
            value = record["input"]
            assert isinstance(value, int)
            return value * value
        squares = record["input"]
        assert isinstance(squares, dict)
        return sum(squares["square"])

    claimed = drive(conn, "fan", worker, handler)
    assert sum(1 for r in claimed if r["step_slug"] == "square") == 5
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"total": 55}


def test_large_fan_out(conn: Conn) -> None:
    define_flow(conn, "wide", [map_step("each")])
    worker = register_worker(conn, "wide")
    run = start_flow(conn, "wide", list(range(200)))
    assert len(queue_messages(conn, "wide")) == 200
    drive(conn, "wide", worker, lambda record: record["input"] + 1)
    finished = get_run(conn, run["run_id"])
    assert finished["output"] == {"each": list(range(1, 201))}


def test_map_steps_in_separate_runs_do_not_mix(conn: Conn) -> None:
    define_flow(conn, "isolated", [map_step("each")])
    worker = register_worker(conn, "isolated")
    first = start_flow(conn, "isolated", [1, 2])
    second = start_flow(conn, "isolated", [10])
    drive(conn, "isolated", worker, by_step({"each": "ok"}))
    assert get_run(conn, first["run_id"])["output"] == {"each": ["ok", "ok"]}
    assert get_run(conn, second["run_id"])["output"] == {"each": ["ok"]}
