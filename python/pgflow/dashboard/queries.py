"""What the dashboard reads, as SQL over one connection each: the flows with their run counts,
queue depths and schedules, pages of runs (with the schedule that started each), one run with
its steps, tasks and attempts, a run's live state, and whole values that the pages show cut
short.

Each statement is served by an index at any number of runs (tests/integration/
test_dashboard_plans.py checks the plans): lists of runs by `runs_*_idx` (keyset pagination:
a page resumes after the last run of the previous one, by `(started_at, run_id)`), a run, its
headers, steps and tasks by their primary keys, a run id prefix by the primary key's range. Reading flow
definitions, workers, and the actions (start, cancel) go through `pgflow.client`, so those rules
live in one place.

Large JSON values (inputs, outputs) and tracebacks are cut to `PREVIEW_CHARS` characters in the
database, so a 10 MB output costs the page nothing; the page fetches the whole value when asked
(`value`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

import psycopg
from psycopg import sql

from pgflow.client import (
    SCHEDULE_HEADER_COLUMNS,
    _prefix_bounds,
    _schedule_info,
)
from pgflow.context import parse_scheduled_at
from pgflow.errors import DashboardBadRequest, DashboardNotFound, RunNotFound

Conn = psycopg.AsyncConnection[dict[str, Any]]

PREVIEW_CHARS: Final = 2000
"""How much of a JSON value or traceback a page gets; the rest is fetched on demand."""

RUN_STATUSES: Final = ("started", "completed", "failed", "cancelled")
TASKS_PER_STEP: Final = 50
"""Tasks of one step a run page lists at first (a map step may have thousands)."""
MAX_PAGE: Final = 200


def preview(expr: str, name: str) -> str:
    """Select list items: `<name>` (the value's text cut to `PREVIEW_CHARS`) and `<name>_size`
    (its whole length in characters), both null for a null value."""
    text = f"(({expr})::text)"
    return f"left({text}, {PREVIEW_CHARS}) as {name}, length({text}) as {name}_size"


def value_of(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The `{text, size, truncated}` a page shows for a value `preview` selected."""
    text = row.pop(name)
    size = row.pop(f"{name}_size")
    if text is None:
        return None
    return {"text": text, "size": size, "truncated": size > len(text)}


# -- flows ---------------------------------------------------------------------------------------

_FLOWS = """
select f.flow_slug, f.opt_max_attempts as max_attempts, f.opt_base_delay as base_delay,
  f.opt_timeout as timeout, f.created_at,
  (select count(*) from pgflow.steps s where s.flow_slug = f.flow_slug)::int as step_count,
  (select fs.serializer from pgflow.flow_serializers fs where fs.flow_slug = f.flow_slug)
    as serializer,
  (select jsonb_object_agg(st.status,
     (select count(*) from pgflow.runs r where r.flow_slug = f.flow_slug and r.status = st.status))
   from unnest(%(statuses)s::text[]) st(status)) as runs
from pgflow.flows f
where %(flow)s::text is null or f.flow_slug = %(flow)s
order by f.flow_slug
"""

# pgmq's own count of each queue (a queue per flow, named by the flow's slug in lower case)
_QUEUES = "select queue_name, queue_length, oldest_msg_age_sec from pgmq.metrics_all()"


# Each schedule with the status of its last run (None once that run is pruned). The input is
# left out: a page lists schedules, and an input may be large.
_SCHEDULES = """
select s.flow_slug, s.schedule_name as name, s.cron, s.timezone, null::jsonb as input,
  s.catch_up, s.origin, s.paused_at, s.removed_from_code_at, s.ticks_from, s.next_tick_at,
  s.last_tick_at, s.last_run_id::text, s.created_at, s.updated_at,
  (select r.status from pgflow.runs r where r.run_id = s.last_run_id) as last_run_status
from pgflow.schedules s
where %(flow)s::text is null or s.flow_slug = %(flow)s
order by s.flow_slug, s.schedule_name
"""


async def schedules(conn: Conn, flow: str | None = None) -> dict[str, list[dict[str, Any]]] | None:
    """The schedules of every flow (or of the one named), by flow slug; None when the
    dashboard's role may not read `pgflow.schedules` (`pgflow_client` may)."""
    try:
        async with conn.transaction():  # a refusal must not break the connection's state
            cursor = await conn.execute(_SCHEDULES, {"flow": flow})
            rows = await cursor.fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return None
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        last_run_status = row.pop("last_run_status")
        # the client's reading: its state, and the next tick when no worker has computed it
        schedule = _schedule_info(row)
        state = schedule.state
        info = dataclasses.asdict(schedule)
        del info["input"]
        if state != "active":
            info["next_tick_at"] = None  # a paused or disabled schedule fires nothing
        info["state"] = state
        info["last_run_status"] = last_run_status
        found.setdefault(info.pop("flow_slug"), []).append(info)
    return found


async def flows(conn: Conn, flow: str | None = None) -> list[dict[str, Any]]:
    """Every flow (or the one named) with its options, runs per status, queue depth and
    schedules.

    The queue depth is None when the dashboard's role may not read pgmq's queues (the roles
    `pgflow_client` and `pgflow_worker` may not); the schedules are None when it may not read
    `pgflow.schedules`."""
    cursor = await conn.execute(_FLOWS, {"statuses": list(RUN_STATUSES), "flow": flow})
    found = await cursor.fetchall()
    by_flow = await schedules(conn, flow)
    queues: dict[str, dict[str, Any]] | None
    try:
        async with conn.transaction():  # a refusal must not break the connection's state
            cursor = await conn.execute(_QUEUES)
            queues = {row["queue_name"]: row for row in await cursor.fetchall()}
    except psycopg.errors.InsufficientPrivilege:
        queues = None
    for row in found:
        row["runs"] = {status: int(row["runs"].get(status, 0)) for status in RUN_STATUSES}
        queue = None if queues is None else queues.get(row["flow_slug"].lower())
        row["queue"] = (
            None
            if queue is None
            else {
                "messages": queue["queue_length"],
                "oldest_age_seconds": queue["oldest_msg_age_sec"],
            }
        )
        row["queue_readable"] = queues is not None
        row["schedules"] = None if by_flow is None else by_flow.get(row["flow_slug"], [])
    return found


# -- pages of runs -------------------------------------------------------------------------------

_RUN_LIST_COLUMNS = (
    "run_id::text, flow_slug, status, started_at, "
    "coalesce(completed_at, failed_at, cancelled_at) as finished_at, remaining_steps, "
    "left(error_message, 300) as error_message, " + SCHEDULE_HEADER_COLUMNS
)

# A run's headers `h` (which schedule started it), looked up by primary key for each run a
# statement returns. The LIMIT keeps the planner from flattening the subquery into a join, which
# it could answer by hashing every run's headers: the cost of a page must not grow with the
# number of runs a schedule started.
_WITH_HEADERS = (
    "pgflow.runs left join lateral (select h0.headers from pgflow.run_headers h0 "
    "where h0.run_id = runs.run_id limit 1) h on true"
)


@dataclass(frozen=True)
class RunFilter:
    flow: str | None = None
    status: str | None = None
    prefix: str | None = None
    """A run id prefix: the runs whose id starts with it, in run id order."""


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, parts: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        fields = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        fields = []
    if len(fields) != parts:
        raise DashboardBadRequest(
            f"page cursor {cursor!r} is not one this dashboard made: follow the `next` link of "
            "the previous page, or leave `after` out for the first page"
        )
    return fields


def check_status(status: str | None) -> str | None:
    if status is not None and status not in RUN_STATUSES:
        raise DashboardBadRequest(
            f"unknown run status {status!r}: use one of {', '.join(RUN_STATUSES)}"
        )
    return status


async def runs_page(conn: Conn, where: RunFilter, after: str | None, limit: int) -> dict[str, Any]:
    """One page of runs, newest first (by run id with a prefix), and the cursor of the next
    page (None on the last)."""
    if not 1 <= limit <= MAX_PAGE:
        raise DashboardBadRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    check_status(where.status)
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if where.flow is not None:
        conditions.append(sql.SQL("flow_slug = %s"))
        params.append(where.flow)
    if where.status is not None:
        conditions.append(sql.SQL("status = %s"))
        params.append(where.status)
    if where.prefix is not None:
        try:
            low, high = _prefix_bounds(where.prefix)
        except RunNotFound as exc:
            raise DashboardBadRequest(str(exc)) from None
        conditions.append(sql.SQL("run_id between %s::uuid and %s::uuid"))
        params += [low, high]
        if after is not None:
            conditions.append(sql.SQL("run_id > %s::uuid"))
            params.append(_uuid(_decode_cursor(after, 1)[0]))
        order = sql.SQL("runs.run_id")
    else:
        if after is not None:
            started_at, run_id = _decode_cursor(after, 2)
            conditions.append(sql.SQL("(started_at, run_id) < (%s::timestamptz, %s::uuid)"))
            params += [_timestamp(started_at), _uuid(run_id)]
        # runs.run_id: the column (the bare name would be the select list's run_id::text)
        order = sql.SQL("started_at desc, runs.run_id desc")
    query = sql.SQL("select {} from {} {} order by {} limit %s").format(
        sql.SQL(_RUN_LIST_COLUMNS),
        sql.SQL(_WITH_HEADERS),
        sql.SQL("where ") + sql.SQL(" and ").join(conditions) if conditions else sql.SQL(""),
        order,
    )
    cursor = await conn.execute(query, [*params, limit + 1])
    rows = await cursor.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        row["scheduled_at"] = parse_scheduled_at(row["scheduled_at"])
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = (
            _encode_cursor(last["run_id"])
            if where.prefix is not None
            else _encode_cursor(last["started_at"].isoformat(), last["run_id"])
        )
    return {"runs": rows, "next": next_cursor}


def _uuid(text: str) -> str:
    try:
        return str(UUID(text))
    except ValueError:
        raise DashboardBadRequest(f"{text!r} is not a run id (a UUID)") from None


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise DashboardBadRequest(f"page cursor holds {text!r}, which is not a time") from None


def run_uuid(run_id: str) -> str:
    """A run id from a URL, checked (404 rather than the database's invalid-input error)."""
    try:
        return str(UUID(run_id))
    except ValueError:
        raise DashboardNotFound(f"{run_id!r} is not a run id: run ids are UUIDs") from None


# -- one run -------------------------------------------------------------------------------------

_RUN = f"""
select run_id::text, flow_slug, status, {preview("input", "input")},
  {preview("output", "output")}, error_message, remaining_steps, started_at, completed_at,
  failed_at, cancelled_at, {SCHEDULE_HEADER_COLUMNS}, now() as now
from {_WITH_HEADERS} where run_id = %(run_id)s
"""

_STEPS = f"""
select ss.step_slug, s.step_type, s.step_index,
  coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
    where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug), '{{}}') as dependencies,
  ss.status, ss.initial_tasks, ss.remaining_tasks, ss.remaining_deps,
  {preview("ss.output", "output")}, ss.error_message, ss.skip_reason, ss.created_at,
  ss.started_at, ss.completed_at, ss.failed_at, ss.skipped_at, s.required_input_pattern,
  s.forbidden_input_pattern, s.when_unmet, s.when_exhausted,
  (select coalesce(jsonb_object_agg(c.status, c.n), '{{}}') from
    (select t.status, count(*) as n from pgflow.step_tasks t
     where t.run_id = ss.run_id and t.step_slug = ss.step_slug group by t.status) c)
    as task_counts
from pgflow.step_states ss
join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
where ss.run_id = %(run_id)s
order by s.step_index
"""

_TASK_COLUMNS = f"""
t.step_slug, t.task_index, t.status, t.attempts_count, t.error_message,
  {preview("t.output", "output")}, t.queued_at, t.started_at, t.completed_at, t.failed_at,
  t.requeued_count, t.last_worker_id::text as worker_id,
  (select w.function_name from pgflow.workers w where w.worker_id = t.last_worker_id
   limit 1) as worker
"""

# the first tasks of every step of a run, from `task_index` on
_RUN_TASKS = f"""
select {_TASK_COLUMNS}
from pgflow.step_states ss
cross join lateral (
  select * from pgflow.step_tasks t0
  where t0.run_id = ss.run_id and t0.step_slug = ss.step_slug
  order by t0.task_index limit %(limit)s
) t
where ss.run_id = %(run_id)s
order by t.step_slug, t.task_index
"""

# more of one step's tasks: after an index, optionally in one status
_STEP_TASKS = f"""
select {_TASK_COLUMNS}
from pgflow.step_tasks t
where t.run_id = %(run_id)s and t.step_slug = %(step_slug)s and t.task_index > %(after)s
  and (%(status)s::text is null or t.status = %(status)s)
order by t.task_index limit %(limit)s
"""

# the attempts of the listed tasks
_ATTEMPTS = f"""
select a.step_slug, a.task_index, a.attempt, a.worker_id::text as worker_id, a.started_at,
  a.ended_at, a.outcome, a.error_message, {preview("a.traceback", "traceback")}
from unnest(%(steps)s::text[], %(indexes)s::int[]) k(step_slug, task_index)
join pgflow.task_attempts a
  on a.run_id = %(run_id)s and a.step_slug = k.step_slug and a.task_index = k.task_index
order by a.step_slug, a.task_index, a.attempt
"""


@contextlib.asynccontextmanager
async def one_snapshot(conn: Conn) -> AsyncIterator[None]:
    """The statements of one answer read one snapshot of the database: a run moving between
    them would otherwise show a task still started beside its completed attempt."""
    async with conn.transaction():
        await conn.execute("set transaction isolation level repeatable read, read only")
        yield


async def run_detail(conn: Conn, run_id: str) -> dict[str, Any]:
    """The run with its input and output, its steps and the first `TASKS_PER_STEP` tasks of
    each, with their attempts, as of one moment."""
    async with one_snapshot(conn):
        return await _run_detail(conn, run_id)


async def _run_detail(conn: Conn, run_id: str) -> dict[str, Any]:
    uuid = run_uuid(run_id)
    params = {"run_id": uuid, "limit": TASKS_PER_STEP}
    cursor = await conn.execute(_RUN, params)
    run = await cursor.fetchone()
    if run is None:
        raise DashboardNotFound(f"run {run_id} does not exist (or was pruned)")
    run["input"] = value_of(run, "input")
    run["output"] = value_of(run, "output")
    run["scheduled_at"] = parse_scheduled_at(run["scheduled_at"])
    cursor = await conn.execute(_STEPS, params)
    steps = await cursor.fetchall()
    cursor = await conn.execute(_RUN_TASKS, params)
    tasks = await _with_attempts(conn, uuid, await cursor.fetchall())
    by_step: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_step.setdefault(task.pop("step_slug"), []).append(task)
    for step in steps:
        step["output"] = value_of(step, "output")
        step["tasks"] = by_step.get(step["step_slug"], [])
        step["tasks_total"] = sum(step["task_counts"].values())
    run["steps"] = steps
    return run


async def step_tasks(
    conn: Conn,
    run_id: str,
    step_slug: str,
    *,
    after: int,
    status: str | None,
    limit: int,
) -> dict[str, Any]:
    """One step's tasks after index `after`, optionally only those in `status`."""
    if not 1 <= limit <= MAX_PAGE:
        raise DashboardBadRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    uuid = run_uuid(run_id)
    params = {
        "run_id": uuid,
        "step_slug": step_slug,
        "after": after,
        "status": status,
        "limit": limit + 1,
    }
    async with one_snapshot(conn):
        cursor = await conn.execute(_STEP_TASKS, params)
        rows = await cursor.fetchall()
        more = len(rows) > limit
        tasks = await _with_attempts(conn, uuid, rows[:limit])
    for task in tasks:
        task.pop("step_slug")
    return {"tasks": tasks, "next": tasks[-1]["task_index"] if more else None}


async def _with_attempts(
    conn: Conn, run_id: str, tasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    for task in tasks:
        task["output"] = value_of(task, "output")
    if not tasks:
        return tasks
    cursor = await conn.execute(
        _ATTEMPTS,
        {
            "run_id": run_id,
            "steps": [t["step_slug"] for t in tasks],
            "indexes": [t["task_index"] for t in tasks],
        },
    )
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for attempt in await cursor.fetchall():
        key = (attempt.pop("step_slug"), attempt.pop("task_index"))
        attempt["traceback"] = value_of(attempt, "traceback")
        found.setdefault(key, []).append(attempt)
    for task in tasks:
        task["attempts"] = found.get((task["step_slug"], task["task_index"]), [])
    return tasks


# -- a run's live state --------------------------------------------------------------------------

# What changes while a run moves, in one cheap statement (primary keys only): the run's status
# and, per step, its status and task counters (attempts included, so a retry shows).
_STATE = """
select r.status, r.remaining_steps, r.error_message,
  coalesce(r.completed_at, r.failed_at, r.cancelled_at) as finished_at,
  coalesce((select jsonb_agg(jsonb_build_object(
      'step_slug', ss.step_slug, 'status', ss.status, 'initial_tasks', ss.initial_tasks,
      'remaining_tasks', ss.remaining_tasks, 'task_counts', tc.counts, 'attempts', tc.attempts)
      order by ss.step_slug)
    from pgflow.step_states ss
    cross join lateral (
      select coalesce(jsonb_object_agg(c.status, c.n), '{}') as counts,
             coalesce(sum(c.attempts), 0) as attempts
      from (select t.status, count(*) as n, sum(t.attempts_count) as attempts
            from pgflow.step_tasks t
            where t.run_id = ss.run_id and t.step_slug = ss.step_slug group by t.status) c
    ) tc
    where ss.run_id = r.run_id), '[]') as steps
from pgflow.runs r where r.run_id = %(run_id)s
"""


async def run_state(conn: Conn, run_id: str) -> dict[str, Any] | None:
    """The run's live state (see `_STATE`), None when the run does not exist."""
    cursor = await conn.execute(_STATE, {"run_id": run_uuid(run_id)})
    return await cursor.fetchone()


# -- whole values --------------------------------------------------------------------------------

ValueKind = Literal["input", "output", "step_output", "task_output", "traceback"]

_VALUES: Final[dict[str, str]] = {
    "input": "select input::text as value, true as found from pgflow.runs "
    "where run_id = %(run_id)s",
    "output": "select output::text as value, true as found from pgflow.runs "
    "where run_id = %(run_id)s",
    "step_output": "select output::text as value, true as found from pgflow.step_states "
    "where run_id = %(run_id)s and step_slug = %(step_slug)s",
    "task_output": "select output::text as value, true as found from pgflow.step_tasks "
    "where run_id = %(run_id)s and step_slug = %(step_slug)s and task_index = %(task_index)s",
    "traceback": "select traceback as value, true as found from pgflow.task_attempts "
    "where run_id = %(run_id)s and step_slug = %(step_slug)s and task_index = %(task_index)s "
    "and attempt = %(attempt)s",
}


async def value(
    conn: Conn,
    kind: ValueKind,
    run_id: str,
    step_slug: str | None = None,
    task_index: int | None = None,
    attempt: int | None = None,
) -> str | None:
    """A whole value as text (JSON, or a traceback's text); None for a null value; `DashboardNotFound`
    when the run, step, task or attempt does not exist."""
    uuid = run_uuid(run_id)
    params = {
        "run_id": uuid,
        "step_slug": step_slug,
        "task_index": task_index,
        "attempt": attempt,
    }
    cursor = await conn.execute(_VALUES[kind], params)
    row = await cursor.fetchone()
    if row is None:
        raise DashboardNotFound(
            f"no {kind.replace('_', ' ')} there: the run, step, task or attempt does not exist"
        )
    text: str | None = row["value"]
    return text


# -- the database's settings ---------------------------------------------------------------------

# the rule of pgflow._events_on, which the dashboard's role may not call
EVENTS_ON: Final = (
    "select coalesce(nullif(current_setting('pgflow.events', true), ''), 'off') = 'on' as on"
)
