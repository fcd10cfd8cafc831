"""Start, watch, wait for and cancel runs, and read flow definitions, from Python.

`Client` and `AsyncClient` offer the same methods with one body: each method is written once,
in `_Plans`, as a generator that yields what it needs done (`_Query`: run this statement and
send me its rows; `_Sleep`: wait this long) and returns the result. `Client` drives a plan with
a blocking connection and `time.sleep`, `AsyncClient` with an async connection and
`asyncio.sleep`; nothing else differs. Every statement the clients send is in `_SQL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgflow.codec import DEFAULT_SERIALIZER, check_json, encode_value
from pgflow.context import SCHEDULE_HEADER, SCHEDULED_AT_HEADER, parse_scheduled_at
from pgflow.db.compile import (
    ENSURE_FLOW_COMPILED,
    check_compiled,
    check_has_steps,
    compile_params,
)
from pgflow.db.connection import connect, connection_defaults, unavailable
from pgflow.db.constraints import explain
from pgflow.db.dsn import redact, resolve_dsn
from pgflow.db.migrations import SCHEMA_VERSION, is_missing_schema, schema_problem
from pgflow.db.workers import STATE, no_worker_warning, serving_count
from pgflow.errors import (
    ConfigError,
    PgflowError,
    RunCancelled,
    RunConflict,
    RunFailed,
    RunNotFound,
    ScheduleError,
    ScheduleNotFound,
    UnencodableValue,
    WaitTimeout,
)
from pgflow.flow import Flow, Schedule
from pgflow.flow.schedule import next_tick
from pgflow.plugins.hookspecs import Serializer
from pgflow.plugins.manager import get_serializer, run_headers

__all__ = [
    "AsyncClient",
    "Client",
    "FlowDefinition",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunNotFound",
    "ScheduleInfo",
    "StepDefinition",
    "StepState",
    "TaskAttempt",
    "TaskState",
    "WaitTimeout",
    "WorkerInfo",
]

T = TypeVar("T")

logger = logging.getLogger("pgflow.client")


# -- what the clients return --------------------------------------------------------------------


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
class TaskAttempt:
    """One ended attempt of a task, as `pgflow.task_attempts` keeps it.

    `outcome` is "completed", "failed", "timed_out" (the handler ran past its step's timeout),
    "worker_stopped" (its worker stopped before the handler ended), "stalled" (no result within
    the timeout + 30 s: the worker is presumed dead) or "cancelled" (the run failed or was
    cancelled, or the step skipped, while it ran). `traceback` is the handler's, redacted and
    bounded by the worker (None when there is none, or when not asked for). An attempt still
    running, or given back unstarted when a worker stopped, has no row.
    """

    step_slug: str
    task_index: int
    attempt: int
    flow_slug: str
    worker_id: str | None
    started_at: datetime | None
    ended_at: datetime
    outcome: str
    error_message: str | None
    traceback: str | None

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None when the start is unknown."""
        if self.started_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


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
    schedule: str | None = None
    """The name of the schedule whose tick started the run (run header `pgflow-schedule`)."""
    scheduled_at: datetime | None = None
    """That tick's instant (run header `pgflow-scheduled-at`)."""

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


@dataclass(frozen=True)
class StepDefinition:
    """A step as the database defines it, with its options resolved the way the SQL does."""

    step_slug: str
    step_type: str
    dependencies: tuple[str, ...]
    max_attempts: int
    base_delay: int
    timeout: int
    start_delay: int
    required_input_pattern: Any
    forbidden_input_pattern: Any
    when_unmet: str
    when_exhausted: str


@dataclass(frozen=True)
class FlowDefinition:
    """A flow as the database defines it. `steps` is filled by `Client.flow(slug)` only."""

    flow_slug: str
    max_attempts: int
    base_delay: int
    timeout: int
    created_at: datetime
    step_count: int
    run_count: int
    steps: tuple[StepDefinition, ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's row for one flow it serves (a worker serving two flows has two), with its
    `state`: "live", "stopped" or "presumed dead" (see `pgflow.db.workers`)."""

    worker_id: str
    flow_slug: str
    function_name: str
    """Where it runs: host:pid."""
    state: str
    started_at: datetime
    last_heartbeat_at: datetime
    heartbeat_age: float
    """Seconds since its last heartbeat, by the database's clock."""
    stopped_at: datetime | None
    deprecated_at: datetime | None


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the database keeps it (see docs/schedules.md)."""

    flow_slug: str
    name: str
    cron: str
    timezone: str
    input: Any
    catch_up: int
    origin: str
    """"code" (declared on the Flow, reconciled by workers) or "runtime" (CLI, Client)."""
    paused_at: datetime | None
    removed_from_code_at: datetime | None
    """When a worker found the code no longer declares it (it then fires nothing)."""
    ticks_from: datetime
    next_tick_at: datetime | None
    """The next tick it fires (None: no tick within 50 years)."""
    last_tick_at: datetime | None
    last_run_id: str | None
    """The run of its last tick (which pruning may have deleted)."""
    created_at: datetime
    updated_at: datetime

    @property
    def state(self) -> str:
        """ "active", "paused" or "removed from code"."""
        if self.removed_from_code_at is not None:
            return "removed from code"
        return "paused" if self.paused_at is not None else "active"


# -- the statements -------------------------------------------------------------------------------

# which schedule started a run and its tick, from the run's headers `h` (docs/schedules.md). The
# tick as text, read by parse_scheduled_at (as ctx.scheduled_at reads it): anyone who may start a
# run may set the header, so text that is no instant must not fail the whole query.
SCHEDULE_HEADER_COLUMNS = (
    f"h.headers ->> '{SCHEDULE_HEADER}' as schedule, "
    f"h.headers ->> '{SCHEDULED_AT_HEADER}' as scheduled_at"
)
_RUN_COLUMNS = (
    "r.run_id::text, r.flow_slug, r.status, r.input, r.output, r.error_message, "
    "r.remaining_steps, r.started_at, r.completed_at, r.failed_at, r.cancelled_at, "
    + SCHEDULE_HEADER_COLUMNS
)
# runs with the schedule that started them, if any (docs/schedules.md)
_RUNS_FROM = "pgflow.runs r left join pgflow.run_headers h on h.run_id = r.run_id"
_SCHEDULE_COLUMNS = (
    "s.flow_slug, s.schedule_name as name, s.cron, s.timezone, s.input, s.catch_up, s.origin, "
    "s.paused_at, s.removed_from_code_at, s.ticks_from, s.next_tick_at, s.last_tick_at, "
    "s.last_run_id::text, s.created_at, s.updated_at"
)
_FLOW_COLUMNS = (
    "f.flow_slug, f.opt_max_attempts as max_attempts, f.opt_base_delay as base_delay, "
    "f.opt_timeout as timeout, f.created_at, "
    "(select count(*) from pgflow.steps s where s.flow_slug = f.flow_slug)::int as step_count, "
    "(select count(*) from pgflow.runs r where r.flow_slug = f.flow_slug)::int as run_count"
)
_DEPENDENCIES = (
    "coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d "
    "where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug), '{}') as dependencies"
)


class _SQL:
    RUN = f"select {_RUN_COLUMNS} from {_RUNS_FROM} where r.run_id = %s"
    STEPS = (
        f"select ss.step_slug, s.step_type, s.step_index, {_DEPENDENCIES}, "
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

    @staticmethod
    def attempts(
        run_id: str, step_slug: str | None, task_index: int | None, tracebacks: bool
    ) -> tuple[str, list[Any]]:
        # a prefix of the primary key (run, step, task, attempt), which also gives the order
        where: list[str] = ["run_id = %s"]
        params: list[Any] = [run_id]
        if step_slug is not None:
            where.append("step_slug = %s")
            params.append(step_slug)
            if task_index is not None:
                where.append("task_index = %s")
                params.append(task_index)
        return (
            "select step_slug, task_index, attempt, flow_slug, worker_id::text, started_at, "
            f"ended_at, outcome, error_message, {'traceback' if tracebacks else 'null::text'} "
            f"as traceback from pgflow.task_attempts where {' and '.join(where)} "
            "order by step_slug, task_index, attempt",
            params,
        )

    START = "select run_id::text from pgflow.start_flow(%s, %s, %s)"
    # when plugins give headers to keep with the run (pgflow_run_headers)
    START_WITH_HEADERS = "select run_id::text from pgflow.start_flow_with_headers(%s, %s, %s, %s)"
    SERVING = f"select {serving_count('%s')} as serving"
    # the flow of a run someone waits for, and how many live workers serve it
    SERVING_RUN = (
        f"select r.flow_slug, {serving_count('r.flow_slug')} as serving from pgflow.runs r "
        "where r.run_id = %s"
    )
    # no row: no such flow (start_flow says so in its own words)
    STEP_COUNT = (
        "select (select count(*) from pgflow.steps s where s.flow_slug = f.flow_slug)::int "
        "as steps from pgflow.flows f where f.flow_slug = %s"
    )
    # the serializer a flow records (no row: the default)
    SERIALIZER = "select serializer from pgflow.flow_serializers where flow_slug = %s"
    OUTPUT_TEXT = "select output::text as output from pgflow.runs where run_id = %s"
    # what a run that a start with a taken run id ran into is: an idempotent start, or a conflict
    STARTED_AS = "select flow_slug, input = %s as same_input from pgflow.runs where run_id = %s"
    # a range on the primary key, so a prefix is looked up in the index
    RUN_IDS_BETWEEN = (
        "select run_id::text from pgflow.runs where run_id between %s::uuid and %s::uuid "
        "order by run_id limit %s"
    )
    CANCEL = "select status from pgflow.cancel_run(%s)"
    SCHEDULE = f"select {_SCHEDULE_COLUMNS} from pgflow.schedules s where s.flow_slug = %s and s.schedule_name = %s"
    CREATE_SCHEDULE = "select 1 from pgflow.create_schedule(%s, %s, %s, %s, %s, %s)"
    PAUSE_SCHEDULE = "select 1 from pgflow.set_schedule_paused(%s, %s, %s)"
    REMOVE_SCHEDULE = "select pgflow.remove_schedule(%s, %s)"
    FLOWS = f"select {_FLOW_COLUMNS} from pgflow.flows f order by f.flow_slug"
    FLOW = f"select {_FLOW_COLUMNS} from pgflow.flows f where f.flow_slug = %s"
    FLOW_STEPS = (
        f"select s.step_slug, s.step_type, {_DEPENDENCIES}, "
        "coalesce(s.opt_max_attempts, f.opt_max_attempts) as max_attempts, "
        "coalesce(s.opt_base_delay, f.opt_base_delay) as base_delay, "
        "coalesce(s.opt_timeout, f.opt_timeout) as timeout, "
        "coalesce(s.opt_start_delay, 0) as start_delay, "
        "s.required_input_pattern, s.forbidden_input_pattern, s.when_unmet, s.when_exhausted "
        "from pgflow.steps s join pgflow.flows f on f.flow_slug = s.flow_slug "
        "where s.flow_slug = %s order by s.step_index"
    )

    @staticmethod
    def workers(flow: str | None, limit: int) -> tuple[str, list[Any]]:
        clause, params = ("where w.queue_name = %s ", [flow]) if flow is not None else ("", [])
        return (
            "select w.worker_id::text, w.queue_name as flow_slug, w.function_name, "
            f"{STATE} as state, w.started_at, w.last_heartbeat_at, "
            "extract(epoch from now() - w.last_heartbeat_at)::float8 as heartbeat_age, "
            f"w.stopped_at, w.deprecated_at from pgflow.workers w {clause}"
            "order by w.started_at desc, w.queue_name limit %s",
            [*params, limit],
        )

    @staticmethod
    def runs(flow: str | None, status: str | None, limit: int) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if flow is not None:
            where.append("r.flow_slug = %s")
            params.append(flow)
        if status is not None:
            where.append("r.status = %s")
            params.append(status)
        clause = f"where {' and '.join(where)} " if where else ""
        params.append(limit)
        return (
            f"select {_RUN_COLUMNS} from {_RUNS_FROM} {clause}order by r.started_at desc limit %s",
            params,
        )

    @staticmethod
    def schedules(flow: str | None) -> tuple[str, list[Any]]:
        clause, params = ("where s.flow_slug = %s ", [flow]) if flow is not None else ("", [])
        return (
            f"select {_SCHEDULE_COLUMNS} from pgflow.schedules s {clause}"
            "order by s.flow_slug, s.schedule_name",
            params,
        )


# -- one body for both clients --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Query:
    """Run `sql` with `params`; the plan receives the rows as dicts."""

    sql: str
    params: Sequence[Any]


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Wait `seconds`; the plan receives None."""

    seconds: float


_Plan = Generator[_Query | _Sleep, Any, T]

# how long `wait` sleeps between looks: short at first (most runs are quick), then longer
_WAIT_STEPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25)


class _Plans:
    """Every client method, written once. A database error raised by a `_Query` is thrown into
    the plan, which may translate it. Each method first makes sure (once per client) that the
    database has this pgflow's schema. `database` names it in messages (without a password)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.compiled: set[str] = set()
        # slugs started by name that are known to have steps (a flow's steps never go away)
        self.with_steps: set[str] = set()
        self.schema_checked = False
        # flow slug -> its serializer when a plugin's (None: the default), as the flow records it
        self.serializers: dict[str, Serializer | None] = {}

    def ready(self) -> _Plan[None]:
        """Raise `SchemaNotMigrated` (or `SchemaTooNew`) unless the schema is this pgflow's;
        asks the database only until it has once said yes."""
        if self.schema_checked:
            return
        try:
            rows = yield _Query(SCHEMA_VERSION, ())
            version = int(rows[0]["version"])
        except psycopg.Error as exc:
            if not is_missing_schema(exc):
                raise
            version = 0
        problem = schema_problem(version, self.database)
        if problem is not None:
            raise problem
        self.schema_checked = True

    def checked(self, plan: _Plan[T]) -> _Plan[T]:
        """`plan`, after `ready`: what the drivers run."""
        yield from self.ready()
        return (yield from plan)

    def serializer_of(self, slug: str, flow: Flow | None = None) -> _Plan[Serializer | None]:
        """The serializer of a flow's values: the Flow's own, else the one the database
        records for it; None for the default. `PluginError` when it is not installed here."""
        if flow is None and slug in self.serializers:
            return self.serializers[slug]
        if flow is not None:
            name = flow.serializer
        else:
            rows = yield _Query(_SQL.SERIALIZER, (slug,))
            name = rows[0]["serializer"] if rows else None
        found = None if name in (None, DEFAULT_SERIALIZER) else get_serializer(name)
        self.serializers[slug] = found
        return found

    def start(self, flow: Flow | str, input: Any, run_id: str | UUID | None) -> _Plan[str]:
        slug = flow.slug if isinstance(flow, Flow) else flow
        given = None if run_id is None else _new_run_id(run_id)
        serializer = yield from self.serializer_of(slug, flow if isinstance(flow, Flow) else None)
        encoded = _encode_input(input, serializer)
        if isinstance(flow, Flow):
            flow.check_run_input(encoded)  # before anything is written, as a worker would
        payload = Jsonb(encoded, dumps=_encoded)
        if isinstance(flow, Flow) and slug not in self.compiled:
            rows = yield _Query(ENSURE_FLOW_COMPILED, compile_params(slug, flow.shape()))
            check_compiled(slug, rows[0]["result"])
            self.compiled.add(slug)
        elif slug not in self.compiled and slug not in self.with_steps:
            rows = yield _Query(_SQL.STEP_COUNT, (slug,))
            if rows:
                check_has_steps(slug, rows[0]["steps"])
                self.with_steps.add(slug)
        # asked here, in the caller's thread or task, so a plugin sees the caller's context
        headers = run_headers(slug)
        start = (
            _Query(_SQL.START_WITH_HEADERS, (slug, payload, Jsonb(headers), given))
            if headers
            else _Query(_SQL.START, (slug, payload, given))
        )
        while True:
            try:
                rows = yield start
                return str(rows[0]["run_id"])
            except psycopg.errors.UniqueViolation as exc:
                if given is None or exc.diag.constraint_name != "runs_pkey":
                    raise
            # The id is taken: starting the same run again is idempotent (a retried request
            # must not fail because its first attempt went through).
            rows = yield _Query(_SQL.STARTED_AS, (payload, given))
            if not rows:
                continue  # deleted (pruned) in between: the id is free again
            taken = rows[0]
            if taken["flow_slug"] == slug and taken["same_input"]:
                logger.info("run %s had already been started with this input", given)
                return given
            what = (
                "with another input"
                if taken["flow_slug"] == slug
                else f"of flow {taken['flow_slug']!r}"
            )
            raise RunConflict(
                f"run {given} already exists {what}; give another run id, or none for a new one"
            )

    def find_run_id(self, prefix: str) -> _Plan[str]:
        low, high = _prefix_bounds(prefix)
        rows = yield _Query(_SQL.RUN_IDS_BETWEEN, (low, high, _CANDIDATES + 1))
        if not rows:
            raise RunNotFound(
                f"run {low} does not exist" if low == high else f"no run id starts with {prefix!r}"
            )
        if len(rows) > 1:
            shown = ", ".join(str(row["run_id"]) for row in rows[:_CANDIDATES])
            more = " and more" if len(rows) > _CANDIDATES else ""
            raise RunNotFound(
                f"run id prefix {prefix!r} is ambiguous: {shown}{more} start with it; give more "
                "of the id"
            )
        return str(rows[0]["run_id"])

    def get(self, run_id: str | UUID, with_tasks: bool) -> _Plan[Run]:
        run_id = _run_uuid(run_id)
        rows = yield _Query(_SQL.RUN, (run_id,))
        if not rows:
            raise RunNotFound(f"run {run_id} does not exist")
        steps = yield _Query(_SQL.STEPS, (run_id,))
        tasks = (yield _Query(_SQL.TASKS, (run_id,))) if with_tasks else []
        run = _run(rows[0], steps=tuple(_steps_from(steps, tasks)))
        if run.output is None:
            return run
        serializer = yield from self.serializer_of(run.flow_slug)
        if serializer is None:
            return run
        # the run's output as its flow's serializer reads it (the steps' stay plain JSON)
        text = yield _Query(_SQL.OUTPUT_TEXT, (run_id,))
        return dataclasses.replace(run, output=serializer.decode(text[0]["output"]))

    def status(self, run_id: str | UUID) -> _Plan[str]:
        rows = yield _Query(_SQL.STATUS, (_run_uuid(run_id),))
        if not rows:
            raise RunNotFound(f"run {run_id} does not exist")
        return str(rows[0]["status"])

    def wait(self, run_id: str | UUID, timeout: float | None) -> _Plan[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0
        while True:
            if (yield from self.status(run_id)) != "started":
                run = yield from self.get(run_id, with_tasks=False)
                if run.status == "completed":
                    return run.output
                raise (RunCancelled if run.status == "cancelled" else RunFailed)(run)
            if step == 0:  # once per wait: a run nobody serves would wait forever
                rows = yield _Query(_SQL.SERVING_RUN, (_run_uuid(run_id),))
                if rows and rows[0]["serving"] == 0:
                    logger.warning("%s", no_worker_warning(rows[0]["flow_slug"]))
            pause = _WAIT_STEPS[min(step, len(_WAIT_STEPS) - 1)]
            step += 1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"run {run_id} did not finish within {timeout:g}s")
                pause = min(pause, left)
            yield _Sleep(pause)

    def attempts(
        self,
        run_id: str | UUID,
        step_slug: str | None,
        task_index: int | None,
        tracebacks: bool,
    ) -> _Plan[list[TaskAttempt]]:
        if task_index is not None and step_slug is None:
            raise PgflowError("a task_index needs its step_slug: give both, or neither")
        run_id = _run_uuid(run_id)
        rows = yield _Query(*_SQL.attempts(run_id, step_slug, task_index, tracebacks))
        if not rows and not (yield _Query(_SQL.STATUS, (run_id,))):
            raise RunNotFound(f"run {run_id} does not exist")
        return [TaskAttempt(**row) for row in rows]

    def cancel(self, run_id: str | UUID) -> _Plan[str]:
        try:
            rows = yield _Query(_SQL.CANCEL, (_run_uuid(run_id),))
        except psycopg.errors.InvalidParameterValue as exc:
            raise RunNotFound(str(exc.diag.message_primary or exc)) from None
        return str(rows[0]["status"])

    def serving(self, flow_slug: str) -> _Plan[int]:
        rows = yield _Query(_SQL.SERVING, (flow_slug,))
        return int(rows[0]["serving"])

    def workers(self, flow: str | None, limit: int) -> _Plan[list[WorkerInfo]]:
        _check_limit(limit)
        rows = yield _Query(*_SQL.workers(flow, limit))
        return [WorkerInfo(**row) for row in rows]

    def runs(self, flow: str | None, status: str | None, limit: int) -> _Plan[list[Run]]:
        _check_limit(limit)
        rows = yield _Query(*_SQL.runs(flow, status, limit))
        return [_run(row) for row in rows]

    def flows(self) -> _Plan[list[FlowDefinition]]:
        rows = yield _Query(_SQL.FLOWS, ())
        return [FlowDefinition(**row) for row in rows]

    def flow(self, flow_slug: str) -> _Plan[FlowDefinition]:
        rows = yield _Query(_SQL.FLOW, (flow_slug,))
        if not rows:
            raise PgflowError(
                f"flow {flow_slug!r} does not exist; `pgflow flows list` shows the flows"
            )
        steps = yield _Query(_SQL.FLOW_STEPS, (flow_slug,))
        return FlowDefinition(
            **rows[0],
            steps=tuple(
                StepDefinition(**{**s, "dependencies": tuple(s["dependencies"])}) for s in steps
            ),
        )

    def schedules(self, flow: str | None) -> _Plan[list[ScheduleInfo]]:
        rows = yield _Query(*_SQL.schedules(flow))
        return [_schedule_info(row) for row in rows]

    def schedule(self, flow_slug: str, name: str) -> _Plan[ScheduleInfo]:
        rows = yield _Query(_SQL.SCHEDULE, (flow_slug, name))
        if not rows:
            raise ScheduleNotFound(
                f"flow {flow_slug!r} has no schedule named {name!r}; `pgflow schedules list` "
                "shows them"
            )
        return _schedule_info(rows[0])

    def add_schedule(self, flow: Flow | str, schedule: Schedule) -> _Plan[ScheduleInfo]:
        slug = flow.slug if isinstance(flow, Flow) else flow
        serializer = yield from self.serializer_of(slug, flow if isinstance(flow, Flow) else None)
        encoded = _encode_input(schedule.input, serializer)
        if isinstance(flow, Flow):
            flow.check_run_input(encoded)
        params = (
            slug,
            schedule.name,
            schedule.cron,
            schedule.timezone,
            Jsonb(encoded, dumps=_encoded),
            schedule.catch_up,
        )
        try:
            yield _Query(_SQL.CREATE_SCHEDULE, params)
        except (psycopg.errors.UniqueViolation, psycopg.errors.InvalidParameterValue) as exc:
            raise ScheduleError(str(exc.diag.message_primary or exc)) from None
        return (yield from self.schedule(slug, schedule.name))

    def pause_schedule(self, flow_slug: str, name: str, paused: bool) -> _Plan[ScheduleInfo]:
        try:
            yield _Query(_SQL.PAUSE_SCHEDULE, (flow_slug, name, paused))
        except psycopg.errors.NoDataFound as exc:
            raise ScheduleNotFound(str(exc.diag.message_primary or exc)) from None
        return (yield from self.schedule(flow_slug, name))

    def remove_schedule(self, flow_slug: str, name: str) -> _Plan[None]:
        try:
            yield _Query(_SQL.REMOVE_SCHEDULE, (flow_slug, name))
        except psycopg.errors.NoDataFound as exc:
            raise ScheduleNotFound(str(exc.diag.message_primary or exc)) from None
        except psycopg.errors.InvalidParameterValue as exc:
            raise ScheduleError(str(exc.diag.message_primary or exc)) from None


def _run(row: dict[str, Any], steps: tuple[StepState, ...] = ()) -> Run:
    return Run(**{**row, "scheduled_at": parse_scheduled_at(row["scheduled_at"])}, steps=steps)


def _schedule_info(row: dict[str, Any]) -> ScheduleInfo:
    info = ScheduleInfo(**row)
    if info.next_tick_at is None:
        # not computed by a worker yet: the first tick after it began counting
        after = info.ticks_from
        if info.last_tick_at is not None:
            after = max(after, info.last_tick_at)
        # a cron written by hand in SQL that does not parse is shown as it is
        with contextlib.suppress(ScheduleError):
            info = dataclasses.replace(
                info, next_tick_at=next_tick(info.cron, info.timezone, after)
            )
    return info


class _Stepper(Generic[T]):
    """Runs a plan step by step: `send` gives it the last query's rows (or its error) and
    returns the next thing to do, or None once the plan has returned `result`."""

    def __init__(self, plan: _Plan[T]) -> None:
        self._plan = plan
        self.result: T

    def send(
        self, rows: list[dict[str, Any]] | None = None, error: BaseException | None = None
    ) -> _Query | _Sleep | None:
        try:
            return self._plan.throw(error) if error is not None else self._plan.send(rows)
        except StopIteration as done:
            self.result = done.value
            return None
        except psycopg.Error as exc:
            # the SQL answers like pgflow (constraint names, pgflow's messages); say what to do
            translated = explain(exc)
            if translated is None:
                raise
            raise translated from exc


def _attempt(
    fetch: Callable[[_Query], list[dict[str, Any]]], query: _Query
) -> tuple[list[dict[str, Any]] | None, BaseException | None]:
    """`(rows, None)`, or `(None, error)` when the database refused the query."""
    try:
        return fetch(query), None
    except psycopg.Error as exc:
        return None, exc


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise PgflowError(f"limit must be 1 or more, got {limit}")


# how many run ids an ambiguous prefix lists
_CANDIDATES = 5
_HEX_DIGITS = frozenset("0123456789abcdef")


def _run_uuid(run_id: str | UUID) -> str:
    """`run_id` as a UUID's text; `RunNotFound` for a value that is not one (rather than the
    database's invalid-input error)."""
    try:
        return str(run_id if isinstance(run_id, UUID) else UUID(str(run_id)))
    except ValueError:
        raise RunNotFound(f"{run_id!r} is not a run id: run ids are UUIDs") from None


def _new_run_id(run_id: str | UUID) -> str:
    """A run id given to start a run, checked: `ConfigError` when it is not a UUID."""
    try:
        return _run_uuid(run_id)
    except RunNotFound:
        raise ConfigError(
            f"run id {run_id!r} is not a UUID; give a UUID, or no run id to get a new one"
        ) from None


def _encode_input(value: Any, serializer: Serializer | None = None) -> bytes:
    """A run input as JSON, encoded as the worker encodes handler outputs (so Structs,
    dataclasses, enums, datetimes, UUIDs and Decimals are inputs too), or by the flow's own
    serializer; `ConfigError` for a value that has no JSON form."""
    try:
        if serializer is None:
            return encode_value(value)
        return check_json(serializer.encode(value), "what the flow's serializer wrote")
    except UnencodableValue as exc:
        reason: object = exc
    except Exception as exc:  # a plugin's serializer may raise anything
        reason = f"{type(exc).__name__}: {exc}"
    raise ConfigError(
        f"the run input cannot be turned into JSON ({type(value).__name__}): {reason}"
    ) from None


def _encoded(text: bytes) -> bytes:
    """The `dumps` of an input `_encode_input` has encoded already."""
    return text


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """The lowest and highest run ids that start with `prefix` (hex digits, hyphens ignored);
    `RunNotFound` when it cannot start a run id."""
    digits = prefix.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or not _HEX_DIGITS.issuperset(digits):
        raise RunNotFound(
            f"{prefix!r} is not a run id nor the start of one: run ids are UUIDs (hex digits "
            "and hyphens), as `pgflow runs list` shows them"
        )
    return str(UUID(digits.ljust(32, "0"))), str(UUID(digits.ljust(32, "f")))


def _steps_from(
    step_rows: Sequence[dict[str, Any]], task_rows: Sequence[dict[str, Any]]
) -> list[StepState]:
    tasks: dict[str, list[TaskState]] = {}
    for t in task_rows:
        t = dict(t)
        slug = t.pop("step_slug")
        tasks.setdefault(slug, []).append(TaskState(**t))
    return [
        StepState(
            **{**row, "dependencies": tuple(row["dependencies"])},
            tasks=tuple(tasks.get(row["step_slug"], ())),
        )
        for row in step_rows
    ]


# -- the two drivers ----------------------------------------------------------------------------


class Client:
    """Starts and watches runs. Thread-safe: one connection, used under a lock.

    `dsn` (else `PGFLOW_DSN`, else `DATABASE_URL`) names the database; `dsn="embedded"` uses
    the embedded PostgreSQL. With none of them, `Client()` raises `ConfigError`.
    """

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn, self.dsn_source = resolve_dsn(dsn)
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._plans = _Plans(redact(self.dsn))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _fetch(self, query: _Query) -> list[dict[str, Any]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn, autocommit=True, row_factory=dict_row)
            cursor = self._conn.execute(query.sql, query.params)
            return cursor.fetchall() if cursor.description else []

    def _drive(self, plan: _Plan[T]) -> T:
        stepper = _Stepper(self._plans.checked(plan))
        op = stepper.send()
        while op is not None:
            if isinstance(op, _Sleep):
                time.sleep(op.seconds)
                op = stepper.send()
            else:
                op = stepper.send(*_attempt(self._fetch, op))
        return stepper.result

    def start(self, flow: Flow | str, input: Any = None, run_id: str | UUID | None = None) -> str:
        """Start a run and return its id. A `Flow` object is compiled first if needed, and the
        input is checked against its root steps' typed inputs (`InputValidationError`, as a
        worker would fail the task) before the run is created.

        With `run_id`, starting a run that already exists with the same flow and input returns
        its id (nothing is started twice); with another flow or input it raises `RunConflict`.

        Headers that plugins give (hook `pgflow_run_headers`, such as trace context) are kept
        with the run, in the transaction that creates it.
        """
        return self._drive(self._plans.start(flow, input, run_id))

    def find_run_id(self, prefix: str) -> str:
        """The id of the one run whose id starts with `prefix` (such as the 8 characters the
        progress line shows) or is `prefix`; `RunNotFound` when none or several do."""
        return self._drive(self._plans.find_run_id(prefix))

    def get(self, run_id: str | UUID, *, with_tasks: bool = True) -> Run:
        """The run with its steps (and their tasks)."""
        return self._drive(self._plans.get(run_id, with_tasks))

    def status(self, run_id: str | UUID) -> str:
        return self._drive(self._plans.status(run_id))

    def wait(self, run_id: str | UUID, timeout: float | None = None) -> Any:
        """Wait for the run to finish; return its output, or raise `RunFailed` /
        `RunCancelled`, or `WaitTimeout` after `timeout` seconds. Logs a warning (logger
        `pgflow.client`, once per wait) when no live worker serves the run's flow."""
        return self._drive(self._plans.wait(run_id, timeout))

    def cancel(self, run_id: str | UUID) -> str:
        """Cancel a started run (its open tasks are cancelled); returns the run's status."""
        return self._drive(self._plans.cancel(run_id))

    def attempts(
        self,
        run_id: str | UUID,
        step_slug: str | None = None,
        task_index: int | None = None,
        *,
        tracebacks: bool = True,
    ) -> list[TaskAttempt]:
        """Every ended attempt of the run's tasks (of one step, or one task, when given), by
        step slug, task index and attempt. `tracebacks=False` leaves the tracebacks out (they
        can be large). `RunNotFound` when the run does not exist."""
        return self._drive(self._plans.attempts(run_id, step_slug, task_index, tracebacks))

    def runs(
        self, flow: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Run]:
        """The newest runs, optionally of one flow and/or in one status."""
        return self._drive(self._plans.runs(flow, status, limit))

    def workers(self, flow: str | None = None, limit: int = 50) -> list[WorkerInfo]:
        """Workers, newest first (one row per flow a worker serves), optionally of one flow."""
        return self._drive(self._plans.workers(flow, limit))

    def serving_workers(self, flow_slug: str) -> int:
        """How many live workers serve the flow now (see `pgflow.db.workers`)."""
        return self._drive(self._plans.serving(flow_slug))

    def flows(self) -> list[FlowDefinition]:
        """Every flow defined in the database, by slug."""
        return self._drive(self._plans.flows())

    def flow(self, flow_slug: str) -> FlowDefinition:
        """One flow's definition with its steps, in step order."""
        return self._drive(self._plans.flow(flow_slug))

    # -- schedules (docs/schedules.md) -----------------------------------------------------------

    def schedules(self, flow: str | None = None) -> list[ScheduleInfo]:
        """Every schedule, or those of one flow, by flow and name."""
        return self._drive(self._plans.schedules(flow))

    def add_schedule(
        self,
        flow: Flow | str,
        name: str,
        cron: str,
        input: Any = None,
        *,
        timezone: str = "UTC",
        catch_up: int = 0,
    ) -> ScheduleInfo:
        """Create a schedule at run time: each tick of `cron` (in `timezone`) starts a run of
        `flow` with `input`. Reconciliation of the code's schedules never touches it.
        `ScheduleError` for a cron expression or time zone that does not parse, a name the
        flow already uses, or a flow that does not exist."""
        schedule = Schedule(name, cron, input=input, timezone=timezone, catch_up=catch_up)
        return self._drive(self._plans.add_schedule(flow, schedule))

    def pause_schedule(self, flow_slug: str, name: str) -> ScheduleInfo:
        """Stop a schedule from firing, until `resume_schedule`; a redeploy keeps the pause."""
        return self._drive(self._plans.pause_schedule(flow_slug, name, True))

    def resume_schedule(self, flow_slug: str, name: str) -> ScheduleInfo:
        """Fire a paused schedule again, from its next tick (ticks during the pause are not
        caught up)."""
        return self._drive(self._plans.pause_schedule(flow_slug, name, False))

    def remove_schedule(self, flow_slug: str, name: str) -> None:
        """Delete a schedule created at run time, or one the code no longer declares (its runs
        stay). `ScheduleError` for one the code declares: remove it there, or pause it."""
        self._drive(self._plans.remove_schedule(flow_slug, name))


class AsyncClient:
    """`Client` for asyncio code: the same methods, awaited."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn, self.dsn_source = resolve_dsn(dsn)
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._plans = _Plans(redact(self.dsn))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _fetch(self, query: _Query) -> list[dict[str, Any]]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.dsn,
                        autocommit=True,
                        row_factory=dict_row,
                        **connection_defaults(self.dsn, {}),
                    )
                except psycopg.OperationalError as exc:
                    raise unavailable(self.dsn, exc) from exc
            cursor = await self._conn.execute(query.sql, query.params)
            return await cursor.fetchall() if cursor.description else []

    async def _drive(self, plan: _Plan[T]) -> T:
        stepper = _Stepper(self._plans.checked(plan))
        op = stepper.send()
        while op is not None:
            if isinstance(op, _Sleep):
                await asyncio.sleep(op.seconds)
                op = stepper.send()
            else:
                try:
                    op = stepper.send(await self._fetch(op))
                except psycopg.Error as exc:
                    op = stepper.send(error=exc)
        return stepper.result

    async def start(
        self, flow: Flow | str, input: Any = None, run_id: str | UUID | None = None
    ) -> str:
        return await self._drive(self._plans.start(flow, input, run_id))

    async def find_run_id(self, prefix: str) -> str:
        return await self._drive(self._plans.find_run_id(prefix))

    async def get(self, run_id: str | UUID, *, with_tasks: bool = True) -> Run:
        return await self._drive(self._plans.get(run_id, with_tasks))

    async def status(self, run_id: str | UUID) -> str:
        return await self._drive(self._plans.status(run_id))

    async def wait(self, run_id: str | UUID, timeout: float | None = None) -> Any:
        return await self._drive(self._plans.wait(run_id, timeout))

    async def cancel(self, run_id: str | UUID) -> str:
        return await self._drive(self._plans.cancel(run_id))

    async def attempts(
        self,
        run_id: str | UUID,
        step_slug: str | None = None,
        task_index: int | None = None,
        *,
        tracebacks: bool = True,
    ) -> list[TaskAttempt]:
        return await self._drive(self._plans.attempts(run_id, step_slug, task_index, tracebacks))

    async def runs(
        self, flow: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Run]:
        return await self._drive(self._plans.runs(flow, status, limit))

    async def workers(self, flow: str | None = None, limit: int = 50) -> list[WorkerInfo]:
        return await self._drive(self._plans.workers(flow, limit))

    async def serving_workers(self, flow_slug: str) -> int:
        return await self._drive(self._plans.serving(flow_slug))

    async def flows(self) -> list[FlowDefinition]:
        return await self._drive(self._plans.flows())

    async def flow(self, flow_slug: str) -> FlowDefinition:
        return await self._drive(self._plans.flow(flow_slug))

    async def schedules(self, flow: str | None = None) -> list[ScheduleInfo]:
        return await self._drive(self._plans.schedules(flow))

    async def add_schedule(
        self,
        flow: Flow | str,
        name: str,
        cron: str,
        input: Any = None,
        *,
        timezone: str = "UTC",
        catch_up: int = 0,
    ) -> ScheduleInfo:
        schedule = Schedule(name, cron, input=input, timezone=timezone, catch_up=catch_up)
        return await self._drive(self._plans.add_schedule(flow, schedule))

    async def pause_schedule(self, flow_slug: str, name: str) -> ScheduleInfo:
        return await self._drive(self._plans.pause_schedule(flow_slug, name, True))

    async def resume_schedule(self, flow_slug: str, name: str) -> ScheduleInfo:
        return await self._drive(self._plans.pause_schedule(flow_slug, name, False))

    async def remove_schedule(self, flow_slug: str, name: str) -> None:
        await self._drive(self._plans.remove_schedule(flow_slug, name))
