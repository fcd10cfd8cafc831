"""The worker's own statements, apart from claiming and reporting: compile its flows, register,
heartbeat, sweep for stalled tasks, extend or give back prefetched tasks, read a run's input,
and mark itself stopped."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from pgflow.db.compile import ENSURE_FLOW_COMPILED, check_compiled, compile_params
from pgflow.db.constraints import explain
from pgflow.flow import Flow

# stalled-task recovery: one worker at a time, under this advisory lock
REQUEUE_LOCK_KEY = 1885434472

Conn = psycopg.Connection[Any]


def compile_flow(conn: Conn, flow: Flow, allow_data_loss: bool) -> str:
    """Create the flow when missing, verify it when present; `compiled`, `verified` or
    `recompiled`. Raises `FlowMismatch` when the database differs and data loss is not allowed."""
    try:
        row = conn.execute(
            ENSURE_FLOW_COMPILED, compile_params(flow.slug, flow.shape(), allow_data_loss)
        ).fetchone()
    except psycopg.Error as exc:
        translated = explain(exc)
        if translated is None:
            raise
        raise translated from exc
    return check_compiled(flow.slug, row[0] if row else None)


def is_unregistered_worker(exc: psycopg.Error) -> bool:
    """Whether a claim failed because the worker's row is gone (pruned while it lived)."""
    return (
        isinstance(exc, psycopg.errors.ForeignKeyViolation)
        and exc.diag.constraint_name == "step_tasks_last_worker_id_fkey"
    )


def register(conn: Conn, worker_id: UUID, flow_slug: str, function_name: str) -> None:
    conn.execute("select pgflow.register_worker(%s, %s, %s)", (worker_id, flow_slug, function_name))


def heartbeat(conn: Conn, worker_id: UUID) -> bool | None:
    """Record a heartbeat: True when an operator has deprecated the worker, None when its row
    is gone (pruned while the worker lived: it must register again)."""
    row = conn.execute("select pgflow.send_heartbeat(%s)", (worker_id,)).fetchone()
    return None if row is None or row[0] is None else bool(row[0])


def requeue_stalled(conn: Conn) -> tuple[int, int]:
    """Requeue tasks of dead workers, unless another worker is doing it right now: (tasks
    requeued, tasks given up on after too many requeues, which failed like exhausted ones)."""
    with conn.transaction():
        row = conn.execute("select pg_try_advisory_xact_lock(%s)", (REQUEUE_LOCK_KEY,)).fetchone()
        if row is None or not row[0]:
            return 0, 0
        requeued = conn.execute("select pgflow.requeue_stalled_tasks()").fetchone()
        # those the sweep gave up on were marked now(), the same instant in this transaction
        stalled = conn.execute(
            "select count(*) from pgflow.step_tasks where permanently_stalled_at = now()"
        ).fetchone()
    return (int(requeued[0]) if requeued else 0), (int(stalled[0]) if stalled else 0)


# (run_id, step_slug, task_index, attempt) of a claimed task
TaskRef = tuple[str, str, int, int]


def _on_tasks(
    conn: Conn, function: str, flow_slug: str, worker_id: UUID, tasks: list[TaskRef]
) -> int:
    row = conn.execute(
        f"select pgflow.{function}(%s, %s, %s::uuid[], %s::text[], %s::int[], %s::int[])",
        (
            flow_slug,
            worker_id,
            [t[0] for t in tasks],
            [t[1] for t in tasks],
            [t[2] for t in tasks],
            [t[3] for t in tasks],
        ),
    ).fetchone()
    return int(row[0]) if row else 0


def extend_tasks(conn: Conn, flow_slug: str, worker_id: UUID, tasks: list[TaskRef]) -> int:
    """Give prefetched tasks that start late their whole timeout from now; how many were
    still this worker's to extend."""
    return _on_tasks(conn, "extend_tasks", flow_slug, worker_id, tasks)


def release_tasks(conn: Conn, flow_slug: str, worker_id: UUID, tasks: list[TaskRef]) -> int:
    """Give back claimed tasks that never started (their attempt is not counted); how many were
    still this worker's to give back."""
    return _on_tasks(conn, "release_tasks", flow_slug, worker_id, tasks)


def run_input(conn: Conn, run_id: str) -> str | None:
    """The run's input as JSON text (None when the run does not exist)."""
    row = conn.execute(
        "select input::text from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def run_headers(conn: Conn, run_id: str) -> dict[str, str] | None:
    """The run's headers (`{}` when it was started without any; None when the run does not
    exist)."""
    row = conn.execute(
        "select h.headers from pgflow.runs r "
        "left join pgflow.run_headers h on h.run_id = r.run_id where r.run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    return dict(row[0]) if row[0] else {}


def mark_stopped(conn: Conn, worker_id: UUID) -> None:
    conn.execute("select pgflow.mark_worker_stopped(%s)", (worker_id,))


def wake_listeners(conn: Conn, channels: tuple[str, ...]) -> None:
    """Send an empty notification on each channel, so listener threads see a stop at once."""
    for channel in channels:
        conn.execute("select pg_notify(%s, '')", (channel,))
