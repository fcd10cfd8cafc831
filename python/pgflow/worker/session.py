"""The worker's own statements, apart from claiming and reporting: compile its flows, register,
heartbeat, sweep for stalled tasks, read a run's input, and mark itself stopped."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from pgflow.db.compile import ENSURE_FLOW_COMPILED, check_compiled, compile_params
from pgflow.flow import Flow

# stalled-task recovery: one worker at a time, under this advisory lock
REQUEUE_LOCK_KEY = 1885434472

Conn = psycopg.Connection[Any]


def compile_flow(conn: Conn, flow: Flow, allow_data_loss: bool) -> str:
    """Create the flow when missing, verify it when present; `compiled`, `verified` or
    `recompiled`. Raises `FlowMismatch` when the database differs and data loss is not allowed."""
    row = conn.execute(
        ENSURE_FLOW_COMPILED, compile_params(flow.slug, flow.shape(), allow_data_loss)
    ).fetchone()
    return check_compiled(flow.slug, row[0] if row else None)


def register(conn: Conn, worker_id: UUID, flow_slug: str, function_name: str) -> None:
    conn.execute("select pgflow.register_worker(%s, %s, %s)", (worker_id, flow_slug, function_name))


def heartbeat(conn: Conn, worker_id: UUID) -> bool:
    """Record a heartbeat; True when an operator has deprecated the worker."""
    row = conn.execute("select pgflow.send_heartbeat(%s)", (worker_id,)).fetchone()
    return bool(row is not None and row[0])


def requeue_stalled(conn: Conn) -> int:
    """Requeue tasks of dead workers, unless another worker is doing it right now (then 0)."""
    with conn.transaction():
        row = conn.execute("select pg_try_advisory_xact_lock(%s)", (REQUEUE_LOCK_KEY,)).fetchone()
        if row is None or not row[0]:
            return 0
        count = conn.execute("select pgflow.requeue_stalled_tasks()").fetchone()
    return int(count[0]) if count and count[0] else 0


def run_input(conn: Conn, run_id: str) -> str | None:
    """The run's input as JSON text (None when the run does not exist)."""
    row = conn.execute(
        "select input::text from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def mark_stopped(conn: Conn, worker_id: UUID) -> None:
    conn.execute("select pgflow.mark_worker_stopped(%s)", (worker_id,))


def wake_listeners(conn: Conn, channels: tuple[str, ...]) -> None:
    """Send an empty notification on each channel, so listener threads see a stop at once."""
    for channel in channels:
        conn.execute("select pg_notify(%s, '')", (channel,))
