"""Helpers shared by the SQL contract tests (tests/integration/test_contract_*.py).

They keep each test about behaviour: build a flow from a list of steps, start a run, claim the
visible tasks the way a worker does (pgmq.read + pgflow.start_tasks), complete or fail them, and
read back runs, step states, tasks and queue messages as plain dicts.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Row = dict[str, Any]
Conn = psycopg.Connection[Any]
Query = str | sql.SQL | sql.Composed

# ---------------------------------------------------------------------------------------------
# Plain query helpers


def rows(conn: Conn, query: Query, params: Any = None) -> list[Row]:
    """Run a query and return every row as a dict (an empty list for statements without rows)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def one(conn: Conn, query: Query, params: Any = None) -> Row:
    """Run a query that must return exactly one row."""
    result = rows(conn, query, params)
    assert len(result) == 1, f"expected exactly one row, got {len(result)}: {result!r}"
    return result[0]


def scalar(conn: Conn, query: Query, params: Any = None) -> Any:
    """Run a query that must return exactly one row and return its first column."""
    return next(iter(one(conn, query, params).values()))


def jsonb(value: Any) -> Jsonb:
    """Wrap a Python value as a jsonb parameter (None becomes the JSON literal null)."""
    return Jsonb(value)


# ---------------------------------------------------------------------------------------------
# Errors


def error_text(error: psycopg.Error) -> str:
    """Message, detail and hint of a server error.

    The context is left out on purpose: it quotes function signatures, which would make any
    parameter name look "mentioned".
    """
    diag = error.diag
    parts = (diag.message_primary, diag.message_detail, diag.message_hint)
    return "\n".join(part for part in parts if part)


def expect_error(
    conn: Conn,
    query: Query,
    params: Any = None,
    *mentions: str | tuple[str, ...],
) -> str:
    """Assert that the statement fails with a server error whose text mentions every item.

    Each item of ``mentions`` is a fragment, or a tuple of alternative fragments of which one
    must appear. Matching ignores case. Returns the error text for further checks.
    """
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(query, params)
    assert caught.value.diag.sqlstate is not None, f"not a server error: {caught.value!r}"
    text = error_text(caught.value)
    for mention in mentions:
        options = (mention,) if isinstance(mention, str) else mention
        assert any(option.lower() in text.lower() for option in options), (
            f"the error should say what was wrong (mention one of {options!r}); got: {text!r}"
        )
    return text


# ---------------------------------------------------------------------------------------------
# Flow definitions


@dataclass(frozen=True)
class Step:
    """A step for ``define_flow``; None leaves the add_step parameter to its SQL default."""

    slug: str
    deps: tuple[str, ...] = ()
    step_type: str | None = None
    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    start_delay: int | None = None
    required: Any = None
    forbidden: Any = None
    when_unmet: str | None = None
    when_exhausted: str | None = None


def single(slug: str, *deps: str, **options: Any) -> Step:
    return Step(slug, tuple(deps), **options)


def map_step(slug: str, *deps: str, **options: Any) -> Step:
    return Step(slug, tuple(deps), step_type="map", **options)


def add_step_call(flow_slug: str, step: Step) -> tuple[sql.Composed, dict[str, Any]]:
    """The add_step call for a step, with named arguments so parameter names are exercised."""
    params: dict[str, Any] = {"flow_slug": flow_slug, "step_slug": step.slug}
    if step.deps:
        params["deps_slugs"] = list(step.deps)
    optional = {
        "max_attempts": step.max_attempts,
        "base_delay": step.base_delay,
        "timeout": step.timeout,
        "start_delay": step.start_delay,
        "step_type": step.step_type,
        "when_unmet": step.when_unmet,
        "when_exhausted": step.when_exhausted,
    }
    params.update({name: value for name, value in optional.items() if value is not None})
    if step.required is not None:
        params["required_input_pattern"] = jsonb(step.required)
    if step.forbidden is not None:
        params["forbidden_input_pattern"] = jsonb(step.forbidden)
    casts = {"deps_slugs": "::text[]"}
    arguments = sql.SQL(", ").join(
        sql.SQL("{} => {}{}").format(
            sql.Identifier(name), sql.Placeholder(name), sql.SQL(casts.get(name, ""))
        )
        for name in params
    )
    return sql.SQL("select * from pgflow.add_step({})").format(arguments), params


def add_step(conn: Conn, flow_slug: str, step: Step) -> Row:
    query, params = add_step_call(flow_slug, step)
    return one(conn, query, params)


def create_flow(
    conn: Conn,
    flow_slug: str,
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
) -> Row:
    return one(
        conn,
        "select * from pgflow.create_flow(%s, %s::int, %s::int, %s::int)",
        (flow_slug, max_attempts, base_delay, timeout),
    )


def define_flow(
    conn: Conn,
    flow_slug: str,
    steps: Iterable[Step],
    *,
    max_attempts: int | None = None,
    base_delay: int | None = None,
    timeout: int | None = None,
) -> None:
    """Create a flow and add its steps in the given (topological) order."""
    create_flow(conn, flow_slug, max_attempts=max_attempts, base_delay=base_delay, timeout=timeout)
    for step in steps:
        add_step(conn, flow_slug, step)


def map_chain(first: str, count: int) -> list[Step]:
    """Map steps m1..m<count>, each over the previous one; m1 depends on ``first``."""
    steps: list[Step] = []
    parent = first
    for number in range(1, count + 1):
        slug = f"m{number}"
        steps.append(map_step(slug, parent))
        parent = slug
    return steps


# ---------------------------------------------------------------------------------------------
# Shapes


def pattern(value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {"defined": False}
    return {"defined": True, "value": dict(value)}


def shape_step(
    slug: str,
    dependencies: Sequence[str] = (),
    *,
    step_type: str = "single",
    when_unmet: str = "skip",
    when_exhausted: str = "fail",
    required: Mapping[str, Any] | None = None,
    forbidden: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "slug": slug,
        "stepType": step_type,
        "dependencies": sorted(dependencies),
        "whenUnmet": when_unmet,
        "whenExhausted": when_exhausted,
        "requiredInputPattern": pattern(required),
        "forbiddenInputPattern": pattern(forbidden),
    }


def get_flow_shape(conn: Conn, flow_slug: str) -> Any:
    return scalar(conn, "select pgflow._get_flow_shape(%s)", (flow_slug,))


def compare_shapes(conn: Conn, local: Any, db: Any) -> list[str]:
    result = scalar(conn, "select pgflow._compare_flow_shapes(%s, %s)", (jsonb(local), jsonb(db)))
    assert isinstance(result, list), f"_compare_flow_shapes should return text[], got {result!r}"
    return result


def ensure_compiled(conn: Conn, flow_slug: str, shape: Any, allow_data_loss: bool = False) -> Any:
    return scalar(
        conn,
        "select pgflow.ensure_flow_compiled(flow_slug => %s, shape => %s, allow_data_loss => %s)",
        (flow_slug, jsonb(shape), allow_data_loss),
    )


# ---------------------------------------------------------------------------------------------
# Runs


def start_flow(conn: Conn, flow_slug: str, flow_input: Any, run_id: uuid.UUID | None = None) -> Row:
    return one(
        conn,
        "select * from pgflow.start_flow(%s, %s, %s::uuid)",
        (flow_slug, jsonb(flow_input), run_id),
    )


def get_run(conn: Conn, run_id: uuid.UUID) -> Row:
    return one(conn, "select * from pgflow.runs where run_id = %s", (run_id,))


def step_states(conn: Conn, run_id: uuid.UUID) -> dict[str, Row]:
    found = rows(conn, "select * from pgflow.step_states where run_id = %s", (run_id,))
    return {state["step_slug"]: state for state in found}


def step_state(conn: Conn, run_id: uuid.UUID, step_slug: str) -> Row:
    return one(
        conn,
        "select * from pgflow.step_states where run_id = %s and step_slug = %s",
        (run_id, step_slug),
    )


def tasks(conn: Conn, run_id: uuid.UUID, step_slug: str | None = None) -> list[Row]:
    return rows(
        conn,
        "select * from pgflow.step_tasks where run_id = %s"
        " and (%s::text is null or step_slug = %s) order by step_slug, task_index",
        (run_id, step_slug, step_slug),
    )


def task(conn: Conn, run_id: uuid.UUID, step_slug: str, task_index: int = 0) -> Row:
    return one(
        conn,
        "select * from pgflow.step_tasks where run_id = %s and step_slug = %s and task_index = %s",
        (run_id, step_slug, task_index),
    )


def task_statuses(conn: Conn, run_id: uuid.UUID) -> dict[tuple[str, int], str]:
    return {(t["step_slug"], t["task_index"]): t["status"] for t in tasks(conn, run_id)}


# ---------------------------------------------------------------------------------------------
# Queue


def queue_table(flow_slug: str, prefix: str = "q") -> sql.Composed:
    """pgmq's table for a queue: pgmq lowercases queue names in table names."""
    return sql.SQL("pgmq.{}").format(sql.Identifier(f"{prefix}_{flow_slug.lower()}"))


def queue_messages(conn: Conn, flow_slug: str) -> dict[int, Row]:
    """Messages still in the queue (visible or not), by msg_id."""
    query = sql.SQL("select * from {} order by msg_id").format(queue_table(flow_slug))
    return {message["msg_id"]: message for message in rows(conn, query)}


def archived_ids(conn: Conn, flow_slug: str) -> set[int]:
    query = sql.SQL("select msg_id from {}").format(queue_table(flow_slug, "a"))
    return {message["msg_id"] for message in rows(conn, query)}


def seconds_until_visible(conn: Conn, flow_slug: str, msg_id: int) -> float:
    """How far the message's vt lies in the future, in seconds (negative: visible now)."""
    query = sql.SQL(
        "select extract(epoch from vt - clock_timestamp())::float8 from {} where msg_id = %s"
    ).format(queue_table(flow_slug))
    return float(scalar(conn, query, (msg_id,)))


def server_clock(conn: Conn) -> datetime.datetime:
    """The server's clock_timestamp(), the clock pgmq and pgflow stamp visibility times with."""
    value = scalar(conn, "select clock_timestamp()")
    assert isinstance(value, datetime.datetime)
    return value


def assert_visible_after(
    conn: Conn,
    flow_slug: str,
    msg_id: int,
    seconds: float,
    before: datetime.datetime,
    after: datetime.datetime,
) -> None:
    """The message's vt was set to "now + seconds" by a call made between before and after.

    Bracketing the call with two server clock readings makes the check exact: no tolerance
    that a slow machine could exceed, and none so wide that an off-by-two would pass.
    """
    query = sql.SQL("select vt from {} where msg_id = %s").format(queue_table(flow_slug))
    vt = scalar(conn, query, (msg_id,))
    low = before + datetime.timedelta(seconds=seconds)
    high = after + datetime.timedelta(seconds=seconds)
    assert low <= vt <= high, (
        f"message {msg_id} should become visible {seconds} s after the call:"
        f" vt {vt.isoformat()} is outside [{low.isoformat()}, {high.isoformat()}]"
    )


def unarchive(conn: Conn, flow_slug: str, msg_id: int) -> None:
    """Put an archived message back in the queue, to see whether a call archives it again."""
    conn.execute(
        sql.SQL(
            "with moved as (delete from {archive} where msg_id = %s"
            " returning msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers)"
            " insert into {queue} (msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers)"
            " overriding system value select * from moved"
        ).format(archive=queue_table(flow_slug, "a"), queue=queue_table(flow_slug)),
        (msg_id,),
    )
    assert msg_id in queue_messages(conn, flow_slug), f"message {msg_id} was not archived"


def make_visible(conn: Conn, flow_slug: str, msg_ids: Sequence[int]) -> None:
    """Make delayed messages readable now, instead of sleeping through a retry delay."""
    query = sql.SQL("update {} set vt = clock_timestamp() where msg_id = any(%s)").format(
        queue_table(flow_slug)
    )
    conn.execute(query, (list(msg_ids),))


def assert_archived(conn: Conn, flow_slug: str, msg_ids: Iterable[int]) -> None:
    wanted = set(msg_ids)
    in_queue = wanted & set(queue_messages(conn, flow_slug))
    assert not in_queue, f"messages {sorted(in_queue)} should have left the queue"
    missing = wanted - archived_ids(conn, flow_slug)
    assert not missing, f"messages {sorted(missing)} should be in the archive"


# ---------------------------------------------------------------------------------------------
# Workers and task handling


def register_worker(conn: Conn, flow_slug: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name) values (%s, %s, %s)",
        (worker_id, flow_slug, "contract_tests"),
    )
    return worker_id


def read_messages(conn: Conn, flow_slug: str, vt: int = 30, qty: int = 1000) -> list[Row]:
    return rows(conn, "select * from pgmq.read(%s, %s, %s)", (flow_slug, vt, qty))


def start_tasks(
    conn: Conn, flow_slug: str, msg_ids: Sequence[int], worker_id: uuid.UUID
) -> list[Row]:
    return rows(
        conn,
        "select * from pgflow.start_tasks(%s, %s::bigint[], %s)",
        (flow_slug, list(msg_ids), worker_id),
    )


def read_and_start(conn: Conn, flow_slug: str, worker_id: uuid.UUID, vt: int = 30) -> list[Row]:
    """Claim every visible task of the flow, as a worker would; sorted by step and index."""
    messages = read_messages(conn, flow_slug, vt=vt)
    if not messages:
        return []
    claimed = start_tasks(conn, flow_slug, [m["msg_id"] for m in messages], worker_id)
    return sorted(claimed, key=lambda record: (record["step_slug"], record["task_index"]))


def complete_task(
    conn: Conn, run_id: uuid.UUID, step_slug: str, task_index: int, output: Any
) -> list[Row]:
    return rows(
        conn,
        "select * from pgflow.complete_task(%s, %s, %s, %s)",
        (run_id, step_slug, task_index, jsonb(output)),
    )


def fail_task(
    conn: Conn, run_id: uuid.UUID, step_slug: str, task_index: int, message: str
) -> list[Row]:
    return rows(
        conn,
        "select * from pgflow.fail_task(%s, %s, %s, %s)",
        (run_id, step_slug, task_index, message),
    )


Handler = Callable[[Row], Any]


def complete_claimed(conn: Conn, claimed: Iterable[Row], handler: Handler) -> None:
    """Complete claimed task records with ``handler(record)`` as output."""
    for record in claimed:
        complete_task(
            conn, record["run_id"], record["step_slug"], record["task_index"], handler(record)
        )


def drive(
    conn: Conn,
    flow_slug: str,
    worker_id: uuid.UUID,
    handler: Handler,
    max_rounds: int = 100,
) -> list[Row]:
    """Claim and complete visible tasks until none is left; returns every claimed record."""
    seen: list[Row] = []
    for _ in range(max_rounds):
        claimed = read_and_start(conn, flow_slug, worker_id)
        if not claimed:
            return seen
        complete_claimed(conn, claimed, handler)
        seen.extend(claimed)
    raise AssertionError(f"flow {flow_slug} still had tasks after {max_rounds} rounds")


def by_step(outputs: Mapping[str, Any]) -> Handler:
    """A handler answering with a fixed output per step slug."""
    return lambda record: outputs[record["step_slug"]]


def echo_input(record: Row) -> Any:
    return record["input"]


# ---------------------------------------------------------------------------------------------
# Time


def age_seconds(conn: Conn, value: Any) -> float:
    """Seconds between a timestamp and now (positive: in the past)."""
    return float(
        scalar(conn, "select extract(epoch from clock_timestamp() - %s)::float8", (value,))
    )


def assert_recent(conn: Conn, value: Any, within: float = 60.0) -> None:
    assert value is not None, "timestamp should be set"
    age = age_seconds(conn, value)
    assert -5.0 <= age <= within, f"timestamp {value} should be about now (age {age:.1f} s)"


# ---------------------------------------------------------------------------------------------
# Realtime fake


def install_fake_realtime(conn: Conn) -> None:
    """A stand-in for Supabase's realtime.send that records every call in order."""
    conn.execute("create schema realtime")
    conn.execute(
        "create table realtime.sent (id bigserial primary key, payload jsonb, event text,"
        " topic text, private boolean)"
    )
    conn.execute(
        "create function realtime.send(payload jsonb, event text, topic text,"
        " private boolean default true) returns void language sql as $$"
        " insert into realtime.sent (payload, event, topic, private)"
        " values (payload, event, topic, private) $$"
    )


def sent_events(conn: Conn, run_id: uuid.UUID | None = None) -> list[Row]:
    found = rows(conn, "select * from realtime.sent order by id")
    if run_id is None:
        return found
    return [event for event in found if event["topic"] == f"pgflow:run:{run_id}"]
