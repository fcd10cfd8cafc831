"""Every statement the dashboard sends about runs, their headers, steps, tasks and attempts is
served by an index: each is EXPLAINed, as the dashboard sends it, on a database of 20,000 runs filled as
benches/bench_dashboard.py fills its 100,000 (the planner's choices are the same at both sizes:
the bench's page times confirm it), with the planner free to choose (enable_seqscan stays on).

What is not checked here: flow definitions and workers, read through `pgflow.client` from
tables whose size does not grow with runs (`steps`, `deps`, `workers`, which
`prune_data_older_than` keeps to recent workers), and pgmq's own `metrics_all()`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgflow.dashboard import queries
from pgflow.dashboard.queries import RunFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
from bench_dashboard import FLOW_A, FLOW_B, fill

RUNS = 20_000
WATCHED = ("runs", "run_headers", "step_states", "step_tasks", "task_attempts")


class Explaining:
    """An async connection that EXPLAINs each statement before running it."""

    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self.conn = conn
        self.plans: list[tuple[str, dict[str, Any]]] = []

    def transaction(self) -> Any:
        return self.conn.transaction()

    async def execute(self, query: Any, params: Any = None) -> Any:
        text = query if isinstance(query, str) else query.as_string(self.conn)
        if text.startswith("set "):  # a setting (one answer's snapshot), no plan to read
            return await self.conn.execute(query, params)
        explained = sql.SQL("explain (format json) ") + sql.SQL(text)  # type: ignore[arg-type]
        cursor = await self.conn.execute(explained, params)
        row = await cursor.fetchone()
        assert row is not None
        self.plans.append((text, row["QUERY PLAN"][0]["Plan"]))
        return await self.conn.execute(query, params)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.fixture(scope="module")
def big_db(_admin: psycopg.Connection[Any], migrated_template: str, dsn_for: Any) -> Iterator[str]:
    name = f"pgflow_dash_plans_{uuid.uuid4().hex[:12]}"
    _admin.execute(
        sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(migrated_template)
        )
    )
    dsn = dsn_for(name)
    try:
        fill(dsn, RUNS)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into pgflow.task_attempts (run_id, step_slug, task_index, attempt,"
                " flow_slug, ended_at, outcome) select run_id, step_slug, task_index, 1,"
                " flow_slug, now(), 'completed' from pgflow.step_tasks"
            )
            conn.execute("vacuum analyze")
        yield dsn
    finally:
        _admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


async def _every_statement(dsn: str) -> list[tuple[str, dict[str, Any]]]:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row
    ) as raw:
        cursor = await raw.execute(
            "select run_id::text as id, started_at from pgflow.runs where flow_slug = %s"
            " and status = 'completed' order by started_at desc offset 500 limit 1",
            (FLOW_A,),
        )
        sample = await cursor.fetchone()
        assert sample is not None
        run_id = sample["id"]
        deep = queries._encode_cursor(sample["started_at"].isoformat(), run_id)
        conn: Any = Explaining(raw)
        await queries.flows(conn)  # with the schedules of every flow
        await queries.flows(conn, FLOW_A)
        for where in (
            RunFilter(),
            RunFilter(flow=FLOW_A),
            RunFilter(status="failed"),
            RunFilter(flow=FLOW_B, status="cancelled"),
        ):
            await queries.runs_page(conn, where, None, 50)
            await queries.runs_page(conn, where, deep, 50)
        await queries.runs_page(conn, RunFilter(prefix=run_id[:3]), None, 50)
        await queries.runs_page(
            conn, RunFilter(prefix=run_id[:2]), queries._encode_cursor(run_id), 50
        )
        await queries.run_detail(conn, run_id)
        await queries.step_tasks(conn, run_id, "score", after=0, status=None, limit=50)
        await queries.step_tasks(conn, run_id, "score", after=-1, status="failed", limit=50)
        await queries.run_state(conn, run_id)
        await queries.value(conn, "input", run_id)
        await queries.value(conn, "output", run_id)
        await queries.value(conn, "step_output", run_id, "score")
        await queries.value(conn, "task_output", run_id, "score", 1)
        await queries.value(conn, "traceback", run_id, "score", 1, 1)
        return conn.plans  # type: ignore[no-any-return]


def test_every_dashboard_statement_uses_indexes(big_db: str) -> None:
    plans = asyncio.run(_every_statement(big_db))
    checked = 0
    for text, plan in plans:
        found = list(nodes(plan))
        seq = [n["Relation Name"] for n in found if n["Node Type"] == "Seq Scan"]
        watched = [r for r in seq if r in WATCHED]
        assert not watched, f"sequential scan of {watched} in:\n{text}\nplan: {plan}"
        used = {n.get("Index Name") for n in found if n.get("Index Name")}
        touches = {n.get("Relation Name") for n in found} & set(WATCHED)
        if touches:
            assert used, f"no index used for {touches} in:\n{text}"
            checked += 1
    assert checked >= 20, f"only {checked} statements reached runs, steps, tasks or attempts"


def test_the_run_lists_read_in_index_order_without_sorting(big_db: str) -> None:
    """A page of runs is the first rows of an index scan (newest first, or by id for a
    prefix), never a sort of every matching run: the cost of a page does not grow with the
    number of runs. Which index depends on selectivity (a flow with 3 runs in 4 is read from
    runs_started_at_idx, filtered)."""
    plans = asyncio.run(_every_statement(big_db))
    lists = [
        list(nodes(plan))
        for text, plan in plans
        if text.startswith("select run_id::text, flow_slug, status")
    ]
    assert len(lists) == 10
    keyset = {
        "runs_started_at_idx",
        "runs_flow_slug_idx",
        "runs_status_idx",
        "runs_flow_status_idx",
        "runs_pkey",
    }
    for found in lists:
        kinds = [n["Node Type"] for n in found]
        assert kinds[0] == "Limit" and "Sort" not in kinds, kinds
        assert {n.get("Index Name") for n in found} & keyset, found
    used = {n.get("Index Name") for found in lists for n in found} - {None}
    assert {"runs_flow_status_idx", "runs_status_idx", "runs_pkey"} <= used, used


def test_which_schedule_started_a_run_is_read_by_primary_key_for_the_runs_shown(
    big_db: str,
) -> None:
    """The runs lists and a run read the headers of the runs they return, one primary key
    lookup each (2,000 of the 20,000 runs were started by a schedule): never a scan or a hash
    of every run's headers, which would grow with the runs schedules start."""
    plans = asyncio.run(_every_statement(big_db))
    reading = [
        (text, list(nodes(plan)))
        for text, plan in plans
        if any(n.get("Relation Name") == "run_headers" for n in nodes(plan))
    ]
    assert len(reading) == 11, [text for text, _ in reading]  # 10 lists and a run
    for text, found in reading:
        headers = [n for n in found if n.get("Relation Name") == "run_headers"]
        assert [n.get("Index Name") for n in headers] == ["run_headers_pkey"], text
        assert all(n["Node Type"] != "Hash" for n in found), text
    # and the fill made runs that a schedule started, so the planner saw many headers
    with psycopg.connect(big_db) as conn:
        row = conn.execute(
            "select count(*) filter (where headers ? 'pgflow-schedule'), count(*)"
            " from pgflow.run_headers"
        ).fetchone()
    assert row is not None and row[0] >= RUNS // 20 and row[1] > row[0]
