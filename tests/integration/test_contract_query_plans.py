"""Contract section 3: the hot queries are served by indexes, not sequential scans."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from contract_helpers import (
    Conn,
    define_flow,
    map_step,
    read_messages,
    register_worker,
    rows,
    scalar,
    single,
    start_flow,
    start_tasks,
    tasks,
)

# (name, table, key column the index condition must use, query); parameters come from a sample
HOT_QUERIES = [
    (
        "ready steps of a run",
        "step_states",
        "run_id",
        "select step_slug from pgflow.step_states"
        " where run_id = %(run_id)s and status = 'created' and remaining_deps = 0",
    ),
    (
        # message ids are per queue and a queue is per flow: start_tasks always has both
        "tasks by message id",
        "step_tasks",
        "message_id",
        "select * from pgflow.step_tasks"
        " where flow_slug = %(flow_slug)s and message_id = any(%(msg_ids)s::bigint[])",
    ),
    (
        "started tasks by worker",
        "step_tasks",
        "last_worker_id",
        "select * from pgflow.step_tasks"
        " where last_worker_id = %(worker_id)s and status = 'started'",
    ),
    (
        "tasks by run and step",
        "step_tasks",
        "run_id",
        "select * from pgflow.step_tasks where run_id = %(run_id)s and step_slug = %(step_slug)s",
    ),
    (
        # requeue_stalled_tasks runs from every worker: it must not scan finished tasks
        "started tasks by age",
        "step_tasks",
        "started_at",
        "select * from pgflow.step_tasks"
        " where status = 'started' and started_at < now() - interval '90 seconds'",
    ),
]


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _explain(conn: Conn, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = scalar(conn, "explain (format json) " + query, params)
    return list(_plan_nodes(result[0]["Plan"]))


def _index_conditions(nodes: list[dict[str, Any]], table: str) -> list[str]:
    """Index conditions used to reach rows of ``table`` (a full index scan has none)."""
    conditions: list[str] = []
    for node in nodes:
        kind = node["Node Type"]
        if kind in ("Index Scan", "Index Only Scan") and node.get("Relation Name") == table:
            conditions.append(node.get("Index Cond", ""))
        elif kind == "Bitmap Heap Scan" and node.get("Relation Name") == table:
            conditions.extend(
                child.get("Index Cond", "")
                for child in _plan_nodes(node)
                if child["Node Type"] == "Bitmap Index Scan"
            )
    return [condition for condition in conditions if condition]


def _assert_uses_index(
    conn: Conn, name: str, table: str, column: str | None, query: str, params: Any
) -> None:
    """No sequential scan of ``table``, and an index condition on ``column`` (any if None)."""
    nodes = _explain(conn, query, params)
    summary = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes]
    seq_scans = [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == table]
    assert not seq_scans, f"{name}: sequential scan of {table}: {summary}"
    conditions = _index_conditions(nodes, table)
    assert any(column is None or column in condition for condition in conditions), (
        f"{name}: no index condition on {table}.{column}: {summary}, conditions {conditions}"
    )


def _sample(conn: Conn) -> dict[str, Any]:
    define_flow(conn, "hot", [single("a"), map_step("each"), single("b", "a")])
    worker = register_worker(conn, "hot")
    run_ids = [start_flow(conn, "hot", [1, 2, 3])["run_id"] for _ in range(5)]
    messages = read_messages(conn, "hot", qty=4)
    start_tasks(conn, "hot", [m["msg_id"] for m in messages], worker)
    conn.execute("analyze pgflow.step_states")
    conn.execute("analyze pgflow.step_tasks")
    sample_task = tasks(conn, run_ids[0], "each")[0]
    return {
        "run_id": run_ids[0],
        "flow_slug": "hot",
        "msg_ids": [m["msg_id"] for m in messages],
        "msg_id": sample_task["message_id"],
        "worker_id": worker,
        "step_slug": "each",
    }


@pytest.mark.parametrize(
    ("name", "table", "column", "query"),
    [pytest.param(*entry, id=entry[0].replace(" ", "_")) for entry in HOT_QUERIES],
)
def test_hot_query_has_a_usable_index(
    conn: Conn, name: str, table: str, column: str, query: str
) -> None:
    params = _sample(conn)
    # with sequential scans priced out, the planner picks an index whenever one can serve; on
    # so few rows it may pick a shorter condition than the key, which the volume test checks
    conn.execute("set enable_seqscan = off")
    try:
        _assert_uses_index(conn, name, table, None, query, params)
    finally:
        conn.execute("reset enable_seqscan")


def test_hot_queries_use_indexes_on_realistic_volume(conn: Conn) -> None:
    define_flow(conn, "volume", [single("a"), single("b", "a")])
    conn.execute(
        "select pgflow.start_flow('volume', jsonb_build_object('n', n))"
        " from generate_series(1, 3000) as n"
    )
    workers = [register_worker(conn, "volume") for _ in range(20)]
    for worker in workers:
        batch = read_messages(conn, "volume", qty=50)
        start_tasks(conn, "volume", [m["msg_id"] for m in batch], worker)
    conn.execute("analyze pgflow.step_states")
    conn.execute("analyze pgflow.step_tasks")
    run_id = scalar(conn, "select run_id from pgflow.runs limit 1")
    msg_ids = [
        r["message_id"]
        for r in rows(conn, "select message_id from pgflow.step_tasks order by random() limit 10")
    ]
    params: dict[str, Any] = {
        "run_id": run_id,
        "flow_slug": "volume",
        "msg_ids": msg_ids,
        "msg_id": msg_ids[0],
        "worker_id": workers[0],
        "step_slug": "a",
    }
    for name, table, column, query in HOT_QUERIES:
        _assert_uses_index(conn, name, table, column, query, params)
    assert isinstance(run_id, uuid.UUID)
