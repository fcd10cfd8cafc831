"""Contract section 6: taskless-step cascades and forced skips."""

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
    read_and_start,
    register_worker,
    scalar,
    single,
    start_flow,
    step_states,
    tasks,
)


def test_chain_of_sixty_empty_maps_completes_in_start_flow(conn: Conn) -> None:
    # more waves than the reference's fixed limit of 50: the bound must follow the step count
    define_flow(conn, "long_empty", [map_step("m0"), *map_chain("m0", 59)])
    run = start_flow(conn, "long_empty", [])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["remaining_steps"] == 0
    assert finished["output"] == {"m59": []}
    states = step_states(conn, run["run_id"])
    assert len(states) == 60
    assert all(s["status"] == "completed" and s["output"] == [] for s in states.values())
    assert tasks(conn, run["run_id"]) == []


def test_chain_of_sixty_empty_maps_completes_in_complete_task(conn: Conn) -> None:
    define_flow(conn, "long_empty_mid", [single("list"), *map_chain("list", 60)])
    worker = register_worker(conn, "long_empty_mid")
    run = start_flow(conn, "long_empty_mid", {})
    read_and_start(conn, "long_empty_mid", worker)
    complete_task(conn, run["run_id"], "list", 0, [])
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"m60": []}


def test_taskless_cascade_stops_at_single_steps_that_have_work(conn: Conn) -> None:
    define_flow(
        conn,
        "stops",
        [map_step("m0"), map_step("m1", "m0"), single("count", "m1"), map_step("m2", "count")],
    )
    run = start_flow(conn, "stops", [])
    states = step_states(conn, run["run_id"])
    assert states["m1"]["status"] == "completed"
    # a single step always has one task, even over an empty array
    assert states["count"]["status"] == "started"
    assert states["m2"]["status"] == "created"
    assert get_run(conn, run["run_id"])["remaining_steps"] == 2


def test_cascade_complete_taskless_steps_with_nothing_to_do(conn: Conn) -> None:
    define_flow(conn, "idle", [single("a")])
    run = start_flow(conn, "idle", {})
    completed = scalar(
        conn, "select pgflow.cascade_complete_taskless_steps(run_id => %s)", (run["run_id"],)
    )
    assert completed == 0
    assert step_states(conn, run["run_id"])["a"]["status"] == "started"


def test_force_skip_cascades_to_transitive_dependents(conn: Conn) -> None:
    define_flow(
        conn,
        "forced",
        [
            single("a"),
            single("b", "a"),
            single("c", "a"),
            map_step("d", "b"),
            single("e", "c", "d"),
            single("independent"),
        ],
    )
    worker = register_worker(conn, "forced")
    run = start_flow(conn, "forced", {})

    skipped = scalar(
        conn,
        "select pgflow._cascade_force_skip_steps(run_id => %s, step_slug => 'a',"
        " skip_reason => 'handler_failed')",
        (run["run_id"],),
    )

    assert skipped == 5, "each skipped step is counted once, even when reached twice"
    states = step_states(conn, run["run_id"])
    assert {slug: (s["status"], s["skip_reason"]) for slug, s in states.items()} == {
        "a": ("skipped", "handler_failed"),
        "b": ("skipped", "dependency_skipped"),
        "c": ("skipped", "dependency_skipped"),
        "d": ("skipped", "dependency_skipped"),
        "e": ("skipped", "dependency_skipped"),
        "independent": ("started", None),
    }
    for slug in "abcde":
        assert states[slug]["skipped_at"] is not None
        assert states[slug]["remaining_tasks"] is None, "skipped steps keep no task counter"
    assert get_run(conn, run["run_id"])["remaining_steps"] == 1
    drive(conn, "forced", worker, by_step({"independent": "done"}))
    finished = get_run(conn, run["run_id"])
    assert finished["status"] == "completed"
    assert finished["output"] == {"independent": "done"}


def test_force_skip_of_a_leaf_skips_only_that_step(conn: Conn) -> None:
    define_flow(conn, "leafy", [single("a"), single("b", "a")])
    run = start_flow(conn, "leafy", {})
    skipped = scalar(
        conn,
        "select pgflow._cascade_force_skip_steps(%s, 'b', 'condition_unmet')",
        (run["run_id"],),
    )
    assert skipped == 1
    states = step_states(conn, run["run_id"])
    assert (states["b"]["status"], states["b"]["skip_reason"]) == ("skipped", "condition_unmet")
    assert states["a"]["status"] == "started"
