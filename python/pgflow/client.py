"""Start, watch, wait for and cancel runs, from Python.

`Client` and `AsyncClient` offer the same methods. Both are thin: every query lives in
`_queries` below and every row becomes a dataclass in one place, so the two differ only in how
they talk to the database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgflow.db import connect, unavailable
from pgflow.dsn import resolve_dsn
from pgflow.errors import PgflowError
from pgflow.flow import Flow

__all__ = [
    "AsyncClient",
    "Client",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunNotFound",
    "StepState",
    "TaskState",
    "WaitTimeout",
]


class RunNotFound(PgflowError, LookupError):
    """No run has this id."""


class RunFailed(PgflowError):
    """The run failed; `error` says why and `run` holds its final state."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.run_id = run.run_id
        self.error = run.error_message or run.failure_reason() or "unknown error"
        super().__init__(f"run {run.run_id} of flow {run.flow_slug!r} {run.status}: {self.error}")


class RunCancelled(RunFailed):
    """The run was cancelled."""


class WaitTimeout(PgflowError, TimeoutError):
    """The run did not finish within the time given to `wait`."""


@dataclass(frozen=True)
class TaskState:
    task_index: int
    status: str
    attempts_count: int
    error_message: str | None
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    requeued_count: int


@dataclass(frozen=True)
class StepState:
    step_slug: str
    step_type: str
    step_index: int
    dependencies: tuple[str, ...]
    status: str
    initial_tasks: int | None
    remaining_tasks: int | None
    remaining_deps: int
    output: Any
    error_message: str | None
    skip_reason: str | None
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    skipped_at: datetime | None
    tasks: tuple[TaskState, ...] = ()

    @property
    def tasks_done(self) -> int:
        return sum(
            1 for t in self.tasks if t.status in ("completed", "failed", "skipped", "cancelled")
        )


@dataclass(frozen=True)
class Run:
    run_id: str
    flow_slug: str
    status: str
    input: Any
    output: Any
    error_message: str | None
    remaining_steps: int
    started_at: datetime
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    steps: tuple[StepState, ...] = field(default=())

    @property
    def finished(self) -> bool:
        return self.status != "started"

    @property
    def finished_at(self) -> datetime | None:
        return self.completed_at or self.failed_at or self.cancelled_at

    def failure_reason(self) -> str | None:
        for step in self.steps:
            if step.status == "failed" and step.error_message:
                return f"step {step.step_slug}: {step.error_message}"
        return None


class _queries:
    RUN = (
        "select run_id::text, flow_slug, status, input, output, error_message, remaining_steps, "
        "started_at, completed_at, failed_at, cancelled_at from pgflow.runs where run_id = %s"
    )
    STEPS = (
        "select ss.step_slug, s.step_type, s.step_index, "
        "coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d "
        "where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug), '{}') as dependencies, "
        "ss.status, ss.initial_tasks, ss.remaining_tasks, ss.remaining_deps, ss.output, "
        "ss.error_message, ss.skip_reason, ss.created_at, ss.started_at, ss.completed_at, "
        "ss.failed_at, ss.skipped_at "
        "from pgflow.step_states ss join pgflow.steps s "
        "on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug "
        "where ss.run_id = %s order by s.step_index"
    )
    TASKS = (
        "select step_slug, task_index, status, attempts_count, error_message, queued_at, "
        "started_at, completed_at, failed_at, requeued_count from pgflow.step_tasks "
        "where run_id = %s order by step_slug, task_index"
    )
    STATUS = "select status from pgflow.runs where run_id = %s"
    START = "select run_id::text from pgflow.start_flow(%s, %s, %s)"
    COMPILE = "select pgflow.ensure_flow_compiled(%s, %s, false)"
    CANCEL = "select status from pgflow.cancel_run(%s)"

    @staticmethod
    def runs(flow: str | None, status: str | None, limit: int) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if flow is not None:
            where.append("flow_slug = %s")
            params.append(flow)
        if status is not None:
            where.append("status = %s")
            params.append(status)
        clause = f"where {' and '.join(where)} " if where else ""
        params.append(limit)
        return (
            "select run_id::text, flow_slug, status, input, output, error_message, "
            "remaining_steps, started_at, completed_at, failed_at, cancelled_at "
            f"from pgflow.runs {clause}order by started_at desc limit %s",
            params,
        )


def _run_from(row: dict[str, Any], steps: Sequence[StepState] = ()) -> Run:
    return Run(steps=tuple(steps), **row)


def _steps_from(
    step_rows: Sequence[dict[str, Any]], task_rows: Sequence[dict[str, Any]]
) -> list[StepState]:
    tasks: dict[str, list[TaskState]] = {}
    for t in task_rows:
        slug = t.pop("step_slug")
        tasks.setdefault(slug, []).append(TaskState(**t))
    return [
        StepState(
            **{**row, "dependencies": tuple(row["dependencies"])},
            tasks=tuple(tasks.get(row["step_slug"], ())),
        )
        for row in step_rows
    ]


def _flow_slug(flow: Flow | str) -> str:
    return flow.slug if isinstance(flow, Flow) else flow


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise PgflowError(f"limit must be 1 or more, got {limit}")


def _check_finished(run: Run) -> Any:
    if run.status == "completed":
        return run.output
    if run.status == "cancelled":
        raise RunCancelled(run)
    raise RunFailed(run)


# how long `wait` sleeps between looks: short at first (most runs are quick), then longer
_WAIT_STEPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25)


class Client:
    """A connection to pgflow's tables. Thread-safe; one connection, used under a lock."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn, self.dsn_source = resolve_dsn(dsn)
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._compiled: set[str] = set()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _c(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, autocommit=True, row_factory=dict_row)
        return self._conn

    def _fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._lock:
            return self._c().execute(query, params).fetchall()

    def start(self, flow: Flow | str, input: Any = None, run_id: str | UUID | None = None) -> str:
        """Start a run and return its id. A `Flow` object is compiled first if needed."""
        slug = _flow_slug(flow)
        with self._lock:
            if isinstance(flow, Flow) and slug not in self._compiled:
                result = self._c().execute(_queries.COMPILE, (slug, Jsonb(flow.shape()))).fetchone()
                if result and next(iter(result.values()))["status"] == "mismatch":
                    diffs = "; ".join(next(iter(result.values()))["differences"])
                    raise PgflowError(
                        f"flow {slug!r} in the database differs from the code: {diffs}"
                    )
                self._compiled.add(slug)
            row = self._c().execute(_queries.START, (slug, Jsonb(input), run_id)).fetchone()
        assert row is not None
        return str(row["run_id"])

    def get(self, run_id: str | UUID, *, with_tasks: bool = True) -> Run:
        """The run with its steps (and their tasks)."""
        with self._lock:
            rows = self._fetch(_queries.RUN, (str(run_id),))
            if not rows:
                raise RunNotFound(f"run {run_id} does not exist")
            steps = self._fetch(_queries.STEPS, (str(run_id),))
            tasks = self._fetch(_queries.TASKS, (str(run_id),)) if with_tasks else []
        return _run_from(rows[0], _steps_from(steps, tasks))

    def status(self, run_id: str | UUID) -> str:
        rows = self._fetch(_queries.STATUS, (str(run_id),))
        if not rows:
            raise RunNotFound(f"run {run_id} does not exist")
        return str(rows[0]["status"])

    def wait(self, run_id: str | UUID, timeout: float | None = None) -> Any:
        """Wait for the run to finish; return its output, or raise `RunFailed` /
        `RunCancelled`, or `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0
        while True:
            if self.status(run_id) != "started":
                return _check_finished(self.get(run_id, with_tasks=False))
            pause = _WAIT_STEPS[min(step, len(_WAIT_STEPS) - 1)]
            step += 1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"run {run_id} did not finish within {timeout:g}s")
                pause = min(pause, left)
            time.sleep(pause)

    def cancel(self, run_id: str | UUID) -> str:
        """Cancel a started run (its open tasks are cancelled); returns the run's status."""
        try:
            rows = self._fetch(_queries.CANCEL, (str(run_id),))
        except psycopg.errors.InvalidParameterValue as exc:
            raise RunNotFound(str(exc.diag.message_primary or exc)) from None
        return str(rows[0]["status"])

    def runs(
        self, flow: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Run]:
        """The newest runs, optionally of one flow and/or in one status."""
        _check_limit(limit)
        query, params = _queries.runs(flow, status, limit)
        return [_run_from(row) for row in self._fetch(query, params)]


class AsyncClient:
    """`Client` for asyncio code: the same methods, awaited."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn, self.dsn_source = resolve_dsn(dsn)
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._compiled: set[str] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _c(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10
                )
            except psycopg.OperationalError as exc:
                raise unavailable(self.dsn, exc) from exc
        return self._conn

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._lock:
            conn = await self._c()
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def start(
        self, flow: Flow | str, input: Any = None, run_id: str | UUID | None = None
    ) -> str:
        slug = _flow_slug(flow)
        if isinstance(flow, Flow) and slug not in self._compiled:
            rows = await self._fetch(_queries.COMPILE, (slug, Jsonb(flow.shape())))
            result = next(iter(rows[0].values()))
            if result["status"] == "mismatch":
                raise PgflowError(
                    f"flow {slug!r} in the database differs from the code: "
                    + "; ".join(result["differences"])
                )
            self._compiled.add(slug)
        rows = await self._fetch(_queries.START, (slug, Jsonb(input), run_id))
        return str(rows[0]["run_id"])

    async def get(self, run_id: str | UUID, *, with_tasks: bool = True) -> Run:
        rows = await self._fetch(_queries.RUN, (str(run_id),))
        if not rows:
            raise RunNotFound(f"run {run_id} does not exist")
        steps = await self._fetch(_queries.STEPS, (str(run_id),))
        tasks = await self._fetch(_queries.TASKS, (str(run_id),)) if with_tasks else []
        return _run_from(rows[0], _steps_from(steps, tasks))

    async def status(self, run_id: str | UUID) -> str:
        rows = await self._fetch(_queries.STATUS, (str(run_id),))
        if not rows:
            raise RunNotFound(f"run {run_id} does not exist")
        return str(rows[0]["status"])

    async def wait(self, run_id: str | UUID, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0
        while True:
            if await self.status(run_id) != "started":
                return _check_finished(await self.get(run_id, with_tasks=False))
            pause = _WAIT_STEPS[min(step, len(_WAIT_STEPS) - 1)]
            step += 1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"run {run_id} did not finish within {timeout:g}s")
                pause = min(pause, left)
            await asyncio.sleep(pause)

    async def cancel(self, run_id: str | UUID) -> str:
        try:
            rows = await self._fetch(_queries.CANCEL, (str(run_id),))
        except psycopg.errors.InvalidParameterValue as exc:
            raise RunNotFound(str(exc.diag.message_primary or exc)) from None
        return str(rows[0]["status"])

    async def runs(
        self, flow: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Run]:
        _check_limit(limit)
        query, params = _queries.runs(flow, status, limit)
        return [_run_from(row) for row in await self._fetch(query, params)]
