"""Bad input across the contract: each refusal says what was wrong and leaves nothing behind."""

from __future__ import annotations

import contextlib
import uuid

import psycopg
from contract_helpers import (
    Conn,
    complete_task,
    define_flow,
    expect_error,
    jsonb,
    map_step,
    register_worker,
    rows,
    scalar,
    shape_step,
    single,
    start_flow,
    start_tasks,
    task,
)


def test_start_flow_of_unknown_flow(conn: Conn) -> None:
    expect_error(
        conn, "select * from pgflow.start_flow('no_such_flow', '{}'::jsonb)", None, "no_such_flow"
    )
    assert scalar(conn, "select count(*) from pgflow.runs") == 0


def test_start_flow_with_states_of_unknown_flow(conn: Conn) -> None:
    expect_error(
        conn,
        "select pgflow.start_flow_with_states('no_such_flow', '{}'::jsonb)",
        None,
        "no_such_flow",
    )


def test_start_flow_with_existing_run_id_is_refused(conn: Conn) -> None:
    define_flow(conn, "unique_runs", [single("a")])
    run = start_flow(conn, "unique_runs", {})
    expect_error(
        conn,
        "select * from pgflow.start_flow('unique_runs', '{}'::jsonb, %s)",
        (run["run_id"],),
        (str(run["run_id"]), "run_id", "already", "exists", "duplicate"),
    )
    assert scalar(conn, "select count(*) from pgflow.step_tasks") == 1


def test_root_map_error_names_flow_and_type_for_start_flow_with_states(conn: Conn) -> None:
    define_flow(conn, "map_states", [map_step("each")])
    expect_error(
        conn,
        "select pgflow.start_flow_with_states('map_states', %s)",
        (jsonb({"not": "array"}),),
        "map_states",
        "object",
    )


def test_ensure_flow_compiled_rejects_invalid_flow_slug(conn: Conn) -> None:
    expect_error(
        conn,
        "select pgflow.ensure_flow_compiled('bad-flow', %s)",
        (jsonb({"steps": [shape_step("a")]}),),
        "slug",
    )
    assert scalar(conn, "select count(*) from pgflow.flows") == 0


def test_ensure_flow_compiled_rejects_map_with_two_dependencies(conn: Conn) -> None:
    shape = {
        "steps": [
            shape_step("left"),
            shape_step("right"),
            shape_step("joined", ["left", "right"], step_type="map"),
        ]
    }
    expect_error(
        conn, "select pgflow.ensure_flow_compiled('two_deps', %s)", (jsonb(shape),), "joined", "2"
    )
    # the whole compilation is one statement: no half-built flow remains
    assert scalar(conn, "select count(*) from pgflow.flows") == 0
    assert scalar(conn, "select count(*) from pgmq.meta") == 0


def test_ensure_flow_compiled_rejects_unknown_dependency(conn: Conn) -> None:
    shape = {"steps": [shape_step("a", ["ghost"])]}
    expect_error(
        conn, "select pgflow.ensure_flow_compiled('ghost_dep', %s)", (jsonb(shape),), "ghost"
    )
    assert scalar(conn, "select count(*) from pgflow.flows") == 0


def test_ensure_flow_compiled_rejects_bad_mode_word(conn: Conn) -> None:
    shape = {"steps": [shape_step("a", when_exhausted="explode")]}
    expect_error(
        conn,
        "select pgflow.ensure_flow_compiled('bad_mode', %s)",
        (jsonb(shape),),
        ("when_exhausted", "whenExhausted", "explode"),
    )


def test_start_tasks_for_another_flow_claims_nothing(conn: Conn) -> None:
    define_flow(conn, "mine", [single("a")])
    define_flow(conn, "theirs", [single("a")])
    worker = register_worker(conn, "theirs")
    run = start_flow(conn, "mine", {})
    msg_id = task(conn, run["run_id"], "a")["message_id"]
    assert start_tasks(conn, "theirs", [msg_id], worker) == []
    assert task(conn, run["run_id"], "a")["status"] == "queued"


def test_complete_task_of_unknown_task_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "known", [single("a")])
    run = start_flow(conn, "known", {})
    before = rows(conn, "select * from pgflow.step_tasks")
    for step_slug, task_index in (("a", 5), ("zzz", 0)):
        # refusing is acceptable; changing anything is not
        with contextlib.suppress(psycopg.Error):
            complete_task(conn, run["run_id"], step_slug, task_index, "nowhere")
    assert rows(conn, "select * from pgflow.step_tasks") == before
    assert scalar(conn, "select status from pgflow.runs") == "started"


def test_start_tasks_by_unregistered_worker_is_refused(conn: Conn) -> None:
    # the contract: a worker row exists before it claims tasks
    define_flow(conn, "registered_only", [single("a")])
    run = start_flow(conn, "registered_only", {})
    msg_id = task(conn, run["run_id"], "a")["message_id"]
    stranger = uuid.uuid4()
    expect_error(
        conn,
        "select * from pgflow.start_tasks('registered_only', %s::bigint[], %s)",
        ([msg_id], stranger),
        "worker",
    )
    assert task(conn, run["run_id"], "a")["status"] == "queued"


def test_force_skip_with_unknown_reason_is_refused(conn: Conn) -> None:
    define_flow(conn, "reasons", [single("a")])
    run = start_flow(conn, "reasons", {})
    expect_error(
        conn,
        "select pgflow._cascade_force_skip_steps(%s, 'a', 'because')",
        (run["run_id"],),
        ("skip_reason", "because"),
    )
    assert task(conn, run["run_id"], "a")["status"] == "queued"


def test_prune_with_negative_interval_is_refused(conn: Conn) -> None:
    define_flow(conn, "keep_all", [single("a")])
    worker = register_worker(conn, "keep_all")
    run = start_flow(conn, "keep_all", {})
    start_tasks(conn, "keep_all", [task(conn, run["run_id"], "a")["message_id"]], worker)
    complete_task(conn, run["run_id"], "a", 0, "done")
    expect_error(
        conn,
        "select pgflow.prune_data_older_than(interval '-1 day')",
        None,
        ("retention_interval", "interval", "negative"),
    )
    assert scalar(conn, "select count(*) from pgflow.runs") == 1


def test_cancel_of_unknown_run_says_so(conn: Conn) -> None:
    missing = uuid.uuid4()
    expect_error(conn, "select pgflow.cancel_run(%s)", (missing,), str(missing))
