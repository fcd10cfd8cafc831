"""Parity with pgflow 0.14.1's SQL: the same constraint names, error messages and behaviour from
the same calls (docs/sql-api.md lists where this project deliberately differs)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from contract_helpers import (
    Conn,
    complete_task,
    define_flow,
    fail_task,
    install_fake_realtime,
    map_step,
    one,
    read_and_start,
    register_worker,
    rows,
    scalar,
    sent_events,
    single,
    start_flow,
    step_state,
)
from psycopg.types.json import Jsonb

# -- constraint names ---------------------------------------------------------------------------

# pgflow 0.14.1's constraints on the tables both projects have, by table.
PGFLOW_CONSTRAINTS = {
    "flows": {
        "flows_pkey",
        "slug_is_valid",
        "opt_max_attempts_is_nonnegative",
        "opt_base_delay_is_nonnegative",
        "opt_timeout_is_positive",
    },
    "steps": {
        "steps_pkey",
        "steps_flow_slug_step_index_key",
        "steps_flow_slug_fkey",
        "steps_step_slug_check",
        "steps_step_type_check",
        "steps_deps_count_check",
        "opt_max_attempts_is_nonnegative",
        "opt_base_delay_is_nonnegative",
        "opt_timeout_is_positive",
        "opt_start_delay_is_nonnegative",
        "required_input_pattern_is_object",
        "forbidden_input_pattern_is_object",
        "when_unmet_is_valid",
        "when_exhausted_is_valid",
    },
    "deps": {
        "deps_pkey",
        "deps_flow_slug_fkey",
        "deps_flow_slug_dep_slug_fkey",
        "deps_flow_slug_step_slug_fkey",
        "deps_check",
    },
    "runs": {
        "runs_pkey",
        "runs_flow_slug_fkey",
        "status_is_valid",
        "runs_remaining_steps_check",
        "completed_at_or_failed_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
    },
    "step_states": {
        "step_states_pkey",
        "step_states_flow_slug_fkey",
        "step_states_run_id_fkey",
        "step_states_flow_slug_step_slug_fkey",
        "status_is_valid",
        "status_and_remaining_tasks_match",
        "remaining_tasks_state_consistency",
        "initial_tasks_known_when_started",
        "step_states_initial_tasks_check",
        "step_states_remaining_deps_check",
        "output_only_for_completed_or_null",
        "skip_reason_matches_status",
        "completed_at_or_failed_at_or_skipped_at",
        "started_at_is_after_created_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
        "skipped_at_is_after_created_at",
    },
    "step_tasks": {
        "step_tasks_pkey",
        "step_tasks_flow_slug_fkey",
        "step_tasks_run_id_fkey",
        "step_tasks_run_id_step_slug_fkey",
        "step_tasks_last_worker_id_fkey",
        "valid_status",
        "output_valid_only_for_completed",
        "attempts_count_nonnegative",
        "completed_at_or_failed_at",
        "completed_at_is_after_queued_at",
        "failed_at_is_after_queued_at",
        "started_at_is_after_queued_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
    },
    "workers": {"workers_pkey"},
}
# Ours only, each listed in docs/sql-api.md.
OUR_EXTRA_CONSTRAINTS = {
    "flows": {"slug_length_fits_queue_name"},
    # our own tables: kept events, the event relay's lease and cursor, a flow's serializer
    "events": {"events_pkey"},
    "event_relay": {"event_relay_pkey", "last_id_is_nonnegative"},
    "flow_serializers": {
        "flow_serializers_pkey",
        "flow_serializers_flow_slug_fkey",
        "serializer_is_named",
    },
    # headers kept with a run (start_flow_with_headers)
    "run_headers": {"run_headers_pkey", "run_headers_run_id_fkey", "headers_is_object"},
    # one row per ended attempt of a task
    "task_attempts": {"task_attempts_pkey", "attempt_is_positive", "outcome_is_valid"},
    # schedules (docs/schedules.md)
    "schedules": {
        "schedules_pkey",
        "schedules_flow_slug_fkey",
        "schedules_flow_slug_schedule_name_key",
        "schedule_name_is_valid",
        "cron_has_five_or_six_fields",
        "timezone_is_named",
        "catch_up_is_bounded",
        "origin_is_valid",
        "removed_only_from_code",
        "next_tick_after_last_tick",
    },
    "steps": {"map_has_at_most_one_dependency"},
    "runs": {"cancelled_at_is_after_started_at"},
    "step_states": {"remaining_tasks_is_nonnegative", "skip_reason_is_valid"},
    "step_tasks": {"task_index_is_nonnegative", "requeued_count_is_nonnegative"},
}
# pgflow's that we leave out on purpose (the key to step_states implies both, and each cost a
# lookup per task inserted).
LEFT_OUT = {"step_tasks": {"step_tasks_flow_slug_fkey", "step_tasks_run_id_fkey"}}


def test_constraint_names_are_pgflows(conn: Conn) -> None:
    found: dict[str, set[str]] = {}
    for r in rows(
        conn,
        "select c.relname, k.conname from pg_constraint k join pg_class c on c.oid = k.conrelid"
        " join pg_namespace n on n.oid = c.relnamespace"
        # PostgreSQL 18 records NOT NULL as constraints too; pgflow's list predates that
        " where n.nspname = 'pgflow' and k.contype <> 'n' and c.relname <> 'migrations'",
    ):
        found.setdefault(r["relname"], set()).add(r["conname"])
    expected = {
        table: (names - LEFT_OUT.get(table, set())) | OUR_EXTRA_CONSTRAINTS.get(table, set())
        for table, names in PGFLOW_CONSTRAINTS.items()
    }
    # and the tables pgflow does not have
    expected |= {t: n for t, n in OUR_EXTRA_CONSTRAINTS.items() if t not in PGFLOW_CONSTRAINTS}
    assert found == expected


# -- definitions raise what the tables raise -------------------------------------------------------


def _violation(conn: Conn, query: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.errors.IntegrityError) as caught:
        conn.execute(query, params)
    return caught.value


@pytest.mark.parametrize(
    ("setup", "call", "table", "constraint"),
    [
        ([], "select pgflow.create_flow('bad-slug')", "flows", "slug_is_valid"),
        ([], "select pgflow.create_flow('fine', timeout => 0)", "flows", "opt_timeout_is_positive"),
        (
            [],
            "select pgflow.create_flow('fine', max_attempts => -1)",
            "flows",
            "opt_max_attempts_is_nonnegative",
        ),
        (["f"], "select pgflow.add_step('f', 'bad-step')", "steps", "steps_step_slug_check"),
        (
            ["f"],
            "select pgflow.add_step('f', 's', step_type => 'loop')",
            "steps",
            "steps_step_type_check",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', when_unmet => 'ignore')",
            "steps",
            "when_unmet_is_valid",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', when_exhausted => 'retry')",
            "steps",
            "when_exhausted_is_valid",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', required_input_pattern => '[]')",
            "steps",
            "required_input_pattern_is_object",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', forbidden_input_pattern => '\"x\"')",
            "steps",
            "forbidden_input_pattern_is_object",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', start_delay => -1)",
            "steps",
            "opt_start_delay_is_nonnegative",
        ),
        (
            ["f"],
            "select pgflow.add_step('f', 's', max_attempts => -2)",
            "steps",
            "opt_max_attempts_is_nonnegative",
        ),
        (["f"], "select pgflow.add_step('f', 's', array['s'])", "deps", "deps_check"),
    ],
)
def test_definitions_raise_the_check_constraint_pgflow_raises(
    conn: Conn, setup: list[str], call: str, table: str, constraint: str
) -> None:
    for flow in setup:
        conn.execute("select pgflow.create_flow(%s)", (flow,))
    error = _violation(conn, call)
    assert isinstance(error, psycopg.errors.CheckViolation)
    assert error.diag.constraint_name == constraint
    assert error.diag.message_primary == (
        f'new row for relation "{table}" violates check constraint "{constraint}"'
    )


@pytest.mark.parametrize(
    ("setup", "call", "table", "constraint"),
    [
        ([], "select pgflow.add_step('ghost', 'a')", "steps", "steps_flow_slug_fkey"),
        (
            ["f"],
            "select pgflow.add_step('f', 'b', array['nope'])",
            "deps",
            "deps_flow_slug_dep_slug_fkey",
        ),
    ],
)
def test_unknown_flows_and_dependencies_raise_pgflows_foreign_keys(
    conn: Conn, setup: list[str], call: str, table: str, constraint: str
) -> None:
    for flow in setup:
        conn.execute("select pgflow.create_flow(%s)", (flow,))
    error = _violation(conn, call)
    assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    assert error.diag.constraint_name == constraint
    assert error.diag.message_primary == (
        f'insert or update on table "{table}" violates foreign key constraint "{constraint}"'
    )


def test_a_duplicate_step_index_raises_the_unique_constraint(conn: Conn) -> None:
    conn.execute("select pgflow.create_flow('indexed')")
    conn.execute("select pgflow.add_step('indexed', 'a')")
    # steps are appended at index = the count so far; make that index taken
    conn.execute("update pgflow.steps set step_index = 1 where flow_slug = 'indexed'")
    error = _violation(conn, "select pgflow.add_step('indexed', 'b')")
    assert isinstance(error, psycopg.errors.UniqueViolation)
    assert error.diag.constraint_name == "steps_flow_slug_step_index_key"


def test_our_own_flow_slug_checks_stay(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 47 characters"):
        conn.execute("select pgflow.create_flow(%s)", ("f" * 48,))
    conn.execute("select pgflow.create_flow('Twin')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="differs only by letter case"):
        conn.execute("select pgflow.create_flow('twin')")


def test_a_map_step_with_two_dependencies_is_refused_first(conn: Conn) -> None:
    expected = 'Map step "m" can have at most one dependency, but 2 were provided: a, b'
    # checked before anything else: even for a flow that does not exist
    for flow in ("nowhere", "mapped"):
        if flow == "mapped":
            define_flow(conn, "mapped", [single("a"), single("b")])
        with pytest.raises(psycopg.errors.RaiseException) as caught:
            conn.execute(
                "select pgflow.add_step(%s, 'm', array['a', 'b'], step_type => 'map')", (flow,)
            )
        assert caught.value.diag.sqlstate == "P0001"
        assert caught.value.diag.message_primary == expected


# -- shapes ---------------------------------------------------------------------------------------


def _step(slug: str, *deps: str, **fields: Any) -> dict[str, Any]:
    step = {
        "slug": slug,
        "stepType": "single",
        "dependencies": sorted(deps),
        "whenUnmet": "skip",
        "whenExhausted": "fail",
        "requiredInputPattern": {"defined": False},
        "forbiddenInputPattern": {"defined": False},
    }
    step.update(fields)
    return step


def _compare(conn: Conn, local: list[dict[str, Any]], db: list[dict[str, Any]]) -> list[str]:
    return list(
        scalar(
            conn,
            "select pgflow._compare_flow_shapes(%s, %s)",
            (Jsonb({"steps": local}), Jsonb({"steps": db})),
        )
    )


def test_shape_differences_are_reported_in_pgflows_words(conn: Conn) -> None:
    assert _compare(conn, [_step("a")], [_step("a")]) == []
    assert _compare(conn, [_step("a"), _step("b")], [_step("a")]) == [
        "Step count differs: 2 vs 1",
        "Step at index 1: missing in second shape (first has 'b')",
    ]
    assert _compare(conn, [_step("a")], [_step("a"), _step("c")]) == [
        "Step count differs: 1 vs 2",
        "Step at index 1: missing in first shape (second has 'c')",
    ]
    assert _compare(conn, [_step("a")], [_step("z")]) == [
        "Step at index 0: slug differs 'a' vs 'z'"
    ]
    assert _compare(conn, [_step("a", stepType="map")], [_step("a")]) == [
        "Step at index 0: type differs 'map' vs 'single'"
    ]
    assert _compare(conn, [_step("c", "b", "a")], [_step("c", "x")]) == [
        "Step at index 0: dependencies differ [a, b] vs [x]"
    ]
    assert _compare(conn, [_step("c")], [_step("c", "x")]) == [
        "Step at index 0: dependencies differ [] vs [x]"
    ]
    assert _compare(conn, [_step("a", whenUnmet="fail")], [_step("a")]) == [
        "Step at index 0: whenUnmet differs 'fail' vs 'skip'"
    ]
    assert _compare(conn, [_step("a", whenExhausted="skip")], [_step("a")]) == [
        "Step at index 0: whenExhausted differs 'skip' vs 'fail'"
    ]
    required = {"defined": True, "value": {"ok": True}}
    assert _compare(conn, [_step("a", requiredInputPattern=required)], [_step("a")]) == [
        "Step at index 0: requiredInputPattern differs "
        """'{"value": {"ok": true}, "defined": true}' vs '{"defined": false}'"""
    ]
    assert _compare(conn, [_step("a")], [_step("a", forbiddenInputPattern=required)]) == [
        "Step at index 0: forbiddenInputPattern differs "
        """'{"defined": false}' vs '{"value": {"ok": true}, "defined": true}'"""
    ]


def test_ensure_flow_compiled_reports_the_differences(conn: Conn) -> None:
    define_flow(conn, "shaped", [single("a")])
    result = scalar(
        conn,
        "select pgflow.ensure_flow_compiled('shaped', %s)",
        (Jsonb({"steps": [_step("a"), _step("b", "a")]}),),
    )
    assert result == {
        "status": "mismatch",
        "differences": [
            "Step count differs: 2 vs 1",
            "Step at index 1: missing in second shape (first has 'b')",
        ],
    }


# -- starting runs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_sql", "message"),
    [
        ("null::jsonb", "Flow root_maps has root map steps but input is NULL"),
        ("'{}'::jsonb", "Flow root_maps has root map steps but input is not an array (got object)"),
        ("'null'::jsonb", "Flow root_maps has root map steps but input is not an array (got null)"),
        (
            "'\"x\"'::jsonb",
            "Flow root_maps has root map steps but input is not an array (got string)",
        ),
    ],
)
def test_root_map_flows_need_an_array(conn: Conn, input_sql: str, message: str) -> None:
    define_flow(conn, "root_maps", [map_step("each")])
    with pytest.raises(psycopg.errors.RaiseException) as caught:
        conn.execute(f"select pgflow.start_flow('root_maps', {input_sql})")
    assert caught.value.diag.sqlstate == "P0001"
    assert caught.value.diag.message_primary == message


def test_start_flow_leaves_the_rest_to_the_runs_table(conn: Conn) -> None:
    error = _violation(conn, "select pgflow.start_flow('nowhere', '{}')")
    assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    assert error.diag.constraint_name == "runs_flow_slug_fkey"
    define_flow(conn, "plain", [single("a")])
    with pytest.raises(psycopg.errors.NotNullViolation) as caught:
        conn.execute("select pgflow.start_flow('plain', null)")
    assert caught.value.diag.column_name == "input"


# -- set_vt_batch ---------------------------------------------------------------------------------


def test_set_vt_batch(conn: Conn) -> None:
    define_flow(conn, "vt", [map_step("each")])
    start_flow(conn, "vt", [1, 2])
    ids = [r["msg_id"] for r in rows(conn, "select msg_id from pgmq.q_vt order by msg_id")]
    for msg_ids, offsets in (
        ("null", "'{5}'"),
        ("'{}'", "'{5}'"),
        ("'{}'", "'{}'"),
        (f"'{{{ids[0]}}}'", "null"),
    ):
        assert rows(conn, f"select * from pgflow.set_vt_batch('vt', {msg_ids}, {offsets})") == []
    with pytest.raises(psycopg.errors.RaiseException) as caught:
        conn.execute("select * from pgflow.set_vt_batch('vt', %s, '{5}')", (ids,))
    assert (
        caught.value.diag.message_primary == "msg_ids length (2) must equal vt_offsets length (1)"
    )
    result = rows(conn, "select * from pgflow.set_vt_batch('vt', %s, '{30, 60}')", (ids,))
    assert [r["msg_id"] for r in sorted(result, key=lambda r: r["msg_id"])] == ids
    assert set(result[0]) == {"msg_id", "read_ct", "enqueued_at", "vt", "message", "headers"}


# -- taskless steps and skips ------------------------------------------------------------------------


def test_taskless_steps_start_and_complete_at_once(conn: Conn) -> None:
    install_fake_realtime(conn)
    define_flow(conn, "empty_map", [map_step("each"), single("after", "each")])
    run = start_flow(conn, "empty_map", [])
    state = step_state(conn, run["run_id"], "each")
    assert state["status"] == "completed"
    assert state["started_at"] is not None
    assert state["started_at"] == state["completed_at"]
    (event,) = [
        e["payload"]
        for e in sent_events(conn, run["run_id"])
        if e["event"] == "step:each:completed"
    ]
    assert event["started_at"] is not None and event["completed_at"] is not None
    assert (event["remaining_tasks"], event["remaining_deps"], event["output"]) == (0, 0, [])


@pytest.mark.parametrize("mode", ["skip", "skip-cascade"])
def test_an_exhausted_task_leaves_its_error_on_the_skipped_step(conn: Conn, mode: str) -> None:
    install_fake_realtime(conn)
    define_flow(
        conn,
        "exhausting",
        [single("fragile", max_attempts=1, when_exhausted=mode), single("after", "fragile")],
    )
    worker = register_worker(conn, "exhausting")
    run = start_flow(conn, "exhausting", {})
    read_and_start(conn, "exhausting", worker)
    fail_task(conn, run["run_id"], "fragile", 0, "ValueError: broken")
    state = step_state(conn, run["run_id"], "fragile")
    assert (state["status"], state["skip_reason"]) == ("skipped", "handler_failed")
    assert state["error_message"] == "ValueError: broken"
    (event,) = [
        e["payload"]
        for e in sent_events(conn, run["run_id"])
        if e["event"] == "step:fragile:skipped"
    ]
    assert event["error_message"] == "ValueError: broken"
    if mode == "skip-cascade":
        after = step_state(conn, run["run_id"], "after")
        assert (after["skip_reason"], after["error_message"]) == ("dependency_skipped", None)


# -- stalled tasks --------------------------------------------------------------------------------


def test_requeue_clears_the_start_and_counts_only_requeued_tasks(conn: Conn) -> None:
    define_flow(conn, "stalling", [single("work")], timeout=5)
    again = start_flow(conn, "stalling", {})
    given_up = start_flow(conn, "stalling", {})
    worker = register_worker(conn, "stalling")
    read_and_start(conn, "stalling", worker)
    conn.execute(
        "update pgflow.step_tasks set started_at = now() - interval '1 hour',"
        " queued_at = now() - interval '2 hours',"
        " requeued_count = case when run_id = %s then 3 else 0 end",
        (given_up["run_id"],),
    )
    assert scalar(conn, "select pgflow.requeue_stalled_tasks()") == 1
    requeued = one(
        conn,
        "select status, started_at, last_worker_id from pgflow.step_tasks where run_id = %s",
        (again["run_id"],),
    )
    assert requeued == {"status": "queued", "started_at": None, "last_worker_id": None}
    terminalized = one(
        conn,
        "select status, permanently_stalled_at is not null as stalled from pgflow.step_tasks"
        " where run_id = %s",
        (given_up["run_id"],),
    )
    assert terminalized == {"status": "failed", "stalled": True}


# -- start_tasks and claim_tasks read only the tasks asked for ---------------------------------------


def _tuples_read(conn: Conn) -> int:
    row = one(
        conn,
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n"
        " from pg_stat_xact_user_tables where schemaname = 'pgflow' and relname = 'step_tasks'",
    )
    return int(row["n"])


@pytest.mark.parametrize("call", ["start_tasks", "claim_tasks"])
def test_claiming_a_few_tasks_of_a_huge_step_reads_only_those(
    db_dsn: str, conn: Conn, call: str
) -> None:
    """On fresh, unanalyzed tables: 10 tasks of a 10,000-task map must not read the step."""
    define_flow(conn, "huge", [map_step("each")])
    start_flow(conn, "huge", list(range(10_000)))
    worker = register_worker(conn, "huge")
    with psycopg.connect(db_dsn) as c:  # one transaction: pg_stat_xact counts only ours
        before = _tuples_read(c)
        if call == "start_tasks":
            ids = [
                r[0] for r in c.execute("select msg_id from pgmq.read('huge', 30, 10)").fetchall()
            ]
            started = c.execute(
                "select count(*) from pgflow.start_tasks('huge', %s, %s)", (ids, worker)
            ).fetchone()
        else:
            started = c.execute(
                "select count(*) from pgflow.claim_tasks('huge', %s, 10) where kind = 'task'",
                (worker,),
            ).fetchone()
        assert started == (10,)
        read = _tuples_read(c) - before
        c.rollback()
    assert read < 200, f"{call} read {read} task rows to claim 10 of 10,000"


# -- retention ----------------------------------------------------------------------------------------


def test_prune_deletes_silent_workers_and_queued_messages_of_pruned_runs(conn: Conn) -> None:
    define_flow(conn, "pruned", [single("a"), single("b", "a")])
    worker = register_worker(conn, "pruned")
    crashed = uuid.uuid4()
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at)"
        " values (%s, 'pruned', 'crashed', now() - interval '30 days')",
        (crashed,),
    )
    run = start_flow(conn, "pruned", {})
    (claimed,) = read_and_start(conn, "pruned", worker)
    complete_task(conn, run["run_id"], claimed["step_slug"], 0, 1)
    # the run is cancelled while b's message is still in the queue, then ages
    conn.execute("select pgflow.cancel_run(%s)", (run["run_id"],))
    msg = scalar(
        conn,
        "select * from pgmq.send('pruned', %s)",
        (Jsonb({"run_id": str(run["run_id"]), "step_slug": "b", "task_index": 0}),),
    )
    conn.execute(
        "update pgflow.step_tasks set message_id = %s where run_id = %s and step_slug = 'b'",
        (msg, run["run_id"]),
    )
    conn.execute(
        "update pgflow.runs set started_at = started_at - interval '30 days',"
        " cancelled_at = cancelled_at - interval '29 days' where run_id = %s",
        (run["run_id"],),
    )
    summary = scalar(conn, "select pgflow.prune_data_older_than('7 days')")
    assert summary["runs"] == 1
    assert summary["workers"] == 1
    assert summary["queued_messages"] == 1
    assert scalar(conn, "select count(*) from pgmq.q_pruned where msg_id = %s", (msg,)) == 0
    assert scalar(conn, "select count(*) from pgflow.workers where worker_id = %s", (crashed,)) == 0
    assert scalar(conn, "select count(*) from pgflow.workers where worker_id = %s", (worker,)) == 1
