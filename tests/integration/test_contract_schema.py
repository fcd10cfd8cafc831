"""Contract sections 1, 3, 5-7: function signatures, table columns and table constraints.

Other programs call these functions by name and with named arguments, so names and types are
part of the contract, not details.
"""

from __future__ import annotations

from typing import Any

import pytest
from contract_helpers import Conn, define_flow, expect_error, rows, single, start_flow

# name -> (input arguments in order, minimum number of defaults, result or None if unspecified)
SIGNATURES: dict[str, tuple[list[tuple[str, str]], int, str | None]] = {
    "is_valid_slug": ([("slug", "text")], 0, "boolean"),
    "create_flow": (
        [
            ("flow_slug", "text"),
            ("max_attempts", "integer"),
            ("base_delay", "integer"),
            ("timeout", "integer"),
        ],
        3,
        "pgflow.flows",
    ),
    "add_step": (
        [
            ("flow_slug", "text"),
            ("step_slug", "text"),
            ("deps_slugs", "text[]"),
            ("max_attempts", "integer"),
            ("base_delay", "integer"),
            ("timeout", "integer"),
            ("start_delay", "integer"),
            ("step_type", "text"),
            ("required_input_pattern", "jsonb"),
            ("forbidden_input_pattern", "jsonb"),
            ("when_unmet", "text"),
            ("when_exhausted", "text"),
        ],
        10,
        "pgflow.steps",
    ),
    "_get_flow_shape": ([("p_flow_slug", "text")], 0, "jsonb"),
    "_compare_flow_shapes": ([("p_local", "jsonb"), ("p_db", "jsonb")], 0, "text[]"),
    "_create_flow_from_shape": ([("p_flow_slug", "text"), ("p_shape", "jsonb")], 0, None),
    "ensure_flow_compiled": (
        [("flow_slug", "text"), ("shape", "jsonb"), ("allow_data_loss", "boolean")],
        1,
        "jsonb",
    ),
    "delete_flow_and_data": ([("p_flow_slug", "text")], 0, None),
    "start_flow": (
        [("flow_slug", "text"), ("input", "jsonb"), ("run_id", "uuid")],
        1,
        "SETOF pgflow.runs",
    ),
    "start_flow_with_states": (
        [("flow_slug", "text"), ("input", "jsonb"), ("run_id", "uuid")],
        1,
        "jsonb",
    ),
    "get_run_with_states": ([("run_id", "uuid")], 0, "jsonb"),
    "start_ready_steps": ([("run_id", "uuid")], 0, None),
    "start_tasks": (
        [("flow_slug", "text"), ("msg_ids", "bigint[]"), ("worker_id", "uuid")],
        0,
        "SETOF pgflow.step_task_record",
    ),
    "complete_task": (
        [("run_id", "uuid"), ("step_slug", "text"), ("task_index", "integer"), ("output", "jsonb")],
        0,
        "SETOF pgflow.step_tasks",
    ),
    "fail_task": (
        [
            ("run_id", "uuid"),
            ("step_slug", "text"),
            ("task_index", "integer"),
            ("error_message", "text"),
        ],
        0,
        "SETOF pgflow.step_tasks",
    ),
    "calculate_retry_delay": (
        [("base_delay", "numeric"), ("attempts_count", "integer")],
        0,
        "integer",
    ),
    "maybe_complete_run": ([("run_id", "uuid")], 0, None),
    "cascade_complete_taskless_steps": ([("run_id", "uuid")], 0, "integer"),
    "cascade_resolve_conditions": ([("run_id", "uuid")], 0, "boolean"),
    "_cascade_force_skip_steps": (
        [("run_id", "uuid"), ("step_slug", "text"), ("skip_reason", "text")],
        0,
        "integer",
    ),
    "set_vt_batch": (
        [("queue_name", "text"), ("msg_ids", "bigint[]"), ("vt_offsets", "integer[]")],
        0,
        None,
    ),
    "mark_worker_stopped": ([("worker_id", "uuid")], 0, None),
    "requeue_stalled_tasks": ([], 0, "integer"),
    "prune_data_older_than": ([("retention_interval", "interval")], 0, None),
    "cancel_run": ([("run_id", "uuid")], 0, None),
}


def _functions(conn: Conn, name: str) -> list[dict[str, Any]]:
    found = rows(
        conn,
        "select p.proargnames as names, p.proargmodes::text[] as modes,"
        " p.proargtypes::oid[]::regtype[]::text[] as types, p.pronargs as nargs,"
        " p.pronargdefaults as ndefaults, pg_get_function_result(p.oid) as result"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'pgflow' and p.proname = %s",
        (name,),
    )
    for function in found:
        names = function["names"] or []
        modes = function["modes"]
        if modes is not None:
            names = [n for n, m in zip(names, modes, strict=True) if m in ("i", "b", "v")]
        function["inputs"] = list(zip(names, function["types"], strict=False))
    return found


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_function_signature(conn: Conn, name: str) -> None:
    expected_inputs, min_defaults, expected_result = SIGNATURES[name]
    candidates = _functions(conn, name)
    assert candidates, f"pgflow.{name} does not exist"
    described = [(c["inputs"], c["ndefaults"], c["result"]) for c in candidates]
    matching = [
        c
        for c in candidates
        if c["inputs"][: len(expected_inputs)] == expected_inputs
        # extra arguments are allowed only when callers may leave them out
        and c["ndefaults"] >= min_defaults + (c["nargs"] - len(expected_inputs))
        and (expected_result is None or c["result"] == expected_result)
    ]
    assert matching, (
        f"pgflow.{name} should take {expected_inputs} (at least the last {min_defaults}"
        f" with defaults) and return {expected_result}; found {described}"
    )


def test_every_pgflow_function_pins_search_path_with_pg_temp_last(conn: Conn) -> None:
    # An empty search_path still searches the caller's temp schema first for tables and types:
    # every function must name pg_temp explicitly, and last.
    found = rows(
        conn,
        "select p.proname, p.proconfig from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'pgflow'",
    )
    unpinned = sorted(
        f["proname"]
        for f in found
        if "search_path=pg_catalog, pg_temp" not in (f["proconfig"] or [])
    )
    assert not unpinned, f"functions without set search_path = pg_catalog, pg_temp: {unpinned}"


TABLE_COLUMNS = {
    "flows": "flow_slug opt_max_attempts opt_base_delay opt_timeout created_at",
    "steps": "flow_slug step_slug step_type step_index deps_count opt_max_attempts opt_base_delay"
    " opt_timeout opt_start_delay required_input_pattern forbidden_input_pattern when_unmet"
    " when_exhausted created_at",
    "deps": "flow_slug dep_slug step_slug created_at",
    "runs": "run_id flow_slug status input output remaining_steps started_at completed_at"
    " failed_at",
    "step_states": "flow_slug run_id step_slug status remaining_tasks initial_tasks"
    " remaining_deps output error_message skip_reason created_at started_at completed_at"
    " failed_at skipped_at",
    "step_tasks": "flow_slug run_id step_slug message_id task_index status attempts_count"
    " error_message output queued_at started_at completed_at failed_at last_worker_id"
    " requeued_count last_requeued_at permanently_stalled_at",
    "workers": "worker_id queue_name function_name started_at deprecated_at stopped_at"
    " last_heartbeat_at",
}


@pytest.mark.parametrize("table", sorted(TABLE_COLUMNS))
def test_table_has_contract_columns(conn: Conn, table: str) -> None:
    found = {
        r["attname"]
        for r in rows(
            conn,
            "select attname from pg_attribute where attrelid = %s::regclass"
            " and attnum > 0 and not attisdropped",
            (f"pgflow.{table}",),
        )
    }
    missing = set(TABLE_COLUMNS[table].split()) - found
    assert not missing, f"pgflow.{table} lacks {sorted(missing)}"


def test_step_task_record_type(conn: Conn) -> None:
    found = rows(
        conn,
        "select attname, atttypid::regtype::text as type from pg_attribute"
        " where attrelid = 'pgflow.step_task_record'::regclass and attnum > 0"
        " and not attisdropped order by attnum",
    )
    assert [(r["attname"], r["type"]) for r in found] == [
        ("flow_slug", "text"),
        ("run_id", "uuid"),
        ("step_slug", "text"),
        ("input", "jsonb"),
        ("msg_id", "bigint"),
        ("task_index", "integer"),
        ("flow_input", "jsonb"),
    ]


def test_pgmq_message_record_has_headers(conn: Conn) -> None:
    found = rows(
        conn,
        "select attname from pg_attribute where attrelid = 'pgmq.message_record'::regclass"
        " and attnum > 0",
    )
    assert "headers" in {r["attname"] for r in found}


def test_workers_reference_is_set_null_on_delete(conn: Conn) -> None:
    rule = rows(
        conn,
        "select confdeltype from pg_constraint where conrelid = 'pgflow.step_tasks'::regclass"
        " and contype = 'f' and confrelid = 'pgflow.workers'::regclass",
    )
    assert [r["confdeltype"] for r in rule] == ["n"]


# ---------------------------------------------------------------------------------------------
# Table constraints on runtime state


@pytest.fixture
def started(conn: Conn) -> Any:
    define_flow(conn, "constrained", [single("a"), single("b", "a")])
    return start_flow(conn, "constrained", {})["run_id"]


CONSTRAINT_VIOLATIONS = [
    # (statement, what is wrong with it)
    ("update pgflow.runs set status = 'paused'", "run status outside the contract"),
    (
        "update pgflow.runs set completed_at = now(), failed_at = now()",
        "completed_at and failed_at both set",
    ),
    (
        "update pgflow.runs set completed_at = started_at - interval '1 hour'",
        "completed before started",
    ),
    (
        "update pgflow.runs set failed_at = started_at - interval '1 hour'",
        "failed before started",
    ),
    ("update pgflow.runs set remaining_steps = -1", "negative remaining_steps"),
    (
        "update pgflow.step_states set initial_tasks = null where step_slug = 'a'",
        "started without a planned task count",
    ),
    (
        "update pgflow.step_states set status = 'completed', completed_at = now(),"
        " output = '1' where step_slug = 'a'",
        "completed with remaining tasks",
    ),
    (
        "update pgflow.step_states set status = 'running' where step_slug = 'a'",
        "step status outside the contract",
    ),
    (
        "update pgflow.step_states set status = 'skipped', skipped_at = now(),"
        " remaining_tasks = null where step_slug = 'b'",
        "skipped without skip_reason",
    ),
    (
        "update pgflow.step_states set skip_reason = 'condition_unmet' where step_slug = 'b'",
        "skip_reason on a step that is not skipped",
    ),
    (
        "update pgflow.step_states set status = 'skipped', skip_reason = 'bored',"
        " skipped_at = now(), remaining_tasks = null where step_slug = 'b'",
        "unknown skip_reason",
    ),
    (
        "update pgflow.step_states set remaining_tasks = 1 where step_slug = 'b'",
        "remaining_tasks set while created",
    ),
    (
        "update pgflow.step_states set output = '1' where step_slug = 'a'",
        "output on a step that is not completed",
    ),
    (
        "update pgflow.step_states set remaining_deps = -1 where step_slug = 'b'",
        "negative remaining_deps",
    ),
    (
        "update pgflow.step_states set initial_tasks = -1 where step_slug = 'b'",
        "negative initial_tasks",
    ),
    (
        "update pgflow.step_states set completed_at = now(), failed_at = now()"
        " where step_slug = 'a'",
        "two terminal timestamps",
    ),
    ("update pgflow.step_tasks set status = 'lost'", "task status outside the contract"),
    (
        "update pgflow.step_tasks set output = '1' where step_slug = 'a'",
        "output on a queued task",
    ),
]


@pytest.mark.parametrize(
    "statement", [pytest.param(stmt, id=why) for stmt, why in CONSTRAINT_VIOLATIONS]
)
def test_runtime_constraints(conn: Conn, started: Any, statement: str) -> None:
    expect_error(conn, statement + _where_run(statement), (started,))


def _where_run(statement: str) -> str:
    return (" and" if " where " in statement else " where") + " run_id = %s"
