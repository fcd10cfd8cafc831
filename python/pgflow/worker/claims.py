"""Claiming tasks: the batched path (one round trip per batch) and the per-task contract path.

Both return `ClaimedTask`s whose `input` is what the handler receives, already in the type its
handler declares. The batched path gets raw JSON text from `pgflow.claim_tasks` (each run input
and dependency output once per batch) and builds every input in one call to the codec: Python
values for untyped handlers, raw JSON decoded by the step's msgspec decoder in one pass for
typed ones. The per-task path reads the queue (`pgflow.read_with_poll`) and calls
`pgflow.start_tasks`, as any client of the contract would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import UUID

import psycopg

from pgflow import codec
from pgflow.codec import MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP
from pgflow.errors import CoreError, InputValidationError, PgflowError
from pgflow.flow import Flow
from pgflow.plugins.hookspecs import Serializer

logger = logging.getLogger("pgflow.worker")

T = TypeVar("T")

# claim_tasks' fourth mode: the input is the row's payload (an element of a large parent array,
# cut out by the SQL)
MODE_PAYLOAD = 3

__all__ = ["MODE_DEPS", "MODE_FLOW_INPUT", "MODE_MAP", "MODE_PAYLOAD", "ClaimedTask", "TaskSource"]


@dataclass(slots=True)
class ClaimedTask:
    """One started task: what to run, and with which input.

    `input_error` is set instead of `input` when the input could not be built or does not fit
    the handler's type (the task is then failed without running its handler, and the rest of
    the batch goes on).
    """

    msg_id: int
    run_id: str
    step_slug: str
    task_index: int
    attempt: int
    input: Any = None
    input_error: str | None = None
    # the input can never fit (a typed handler's validation): fail at once, no retry
    input_error_final: bool = False


class TaskSource(Protocol):
    """Claims up to `qty` tasks of a flow for a worker."""

    def claim(
        self,
        conn: psycopg.Connection[Any],
        flow: Flow,
        worker_id: UUID,
        qty: int,
        serializer: Serializer | None = None,
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        """Returns the tasks and the raw run inputs seen on the way (run_id -> JSON text),
        which the worker keeps so that `ctx.flow_input` needs no query for root steps."""
        ...


_CLAIM_SQL = (
    "select kind, msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload "
    "from pgflow.claim_tasks(%s, %s, %s)"
)


def rows_to_tasks(
    rows: Sequence[tuple[Any, ...]], flow: Flow, serializer: Serializer | None = None
) -> tuple[list[ClaimedTask], dict[str, str]]:
    """Tasks with their inputs from the rows of `claim_tasks` (or of a report that claimed).
    With a `serializer` (a flow's own, not the default) untyped inputs are decoded by it from
    their raw JSON; typed ones are always converted to their handler's type by msgspec."""
    tasks: list[ClaimedTask] = []
    blobs: dict[str, str] = {}
    dead: list[int] = []
    assembled = _Group(flow)
    with_payload = _Group(flow)
    for kind, msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload in rows:
        if kind == "blob":
            blobs[f"{run_id}:{step_slug}"] = payload
            continue
        if kind == "dead":
            dead.append(msg_id)
            continue
        task = ClaimedTask(msg_id, run_id, step_slug, task_index, attempt)
        tasks.append(task)
        if mode == MODE_PAYLOAD:
            with_payload.add(task, payload)
        else:
            assembled.add(task, (mode, run_id, deps, task_index))
    if serializer is None:
        assembled.fill(
            lambda specs: codec.assemble_and_decode(specs, blobs),
            lambda specs: codec.assemble_inputs(specs, blobs),
        )
        with_payload.fill(codec.decode_many, _as_bytes)
    else:
        assembled.fill(
            lambda specs: _decode_with(serializer, codec.assemble_inputs(specs, blobs)),
            lambda specs: codec.assemble_inputs(specs, blobs),
        )
        with_payload.fill(lambda items: _decode_with(serializer, _as_bytes(items)), _as_bytes)
    if dead:
        logger.warning(
            "archived %d message(s) of flow %s's queue that no task could use (duplicates, or "
            "for tasks that finished, were cancelled or do not exist): msg_id %s",
            len(dead),
            flow.slug,
            ", ".join(map(str, dead[:20])) + (", ..." if len(dead) > 20 else ""),
        )
    run_inputs = {key[:-1]: raw for key, raw in blobs.items() if key.endswith(":")}
    return tasks, run_inputs


class BatchedSource:
    """`pgflow.claim_tasks`: one round trip, raw JSON, inputs built in one codec call."""

    def claim(
        self,
        conn: psycopg.Connection[Any],
        flow: Flow,
        worker_id: UUID,
        qty: int,
        serializer: Serializer | None = None,
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        rows = conn.execute(_CLAIM_SQL, (flow.slug, worker_id, qty), prepare=True).fetchall()
        return rows_to_tasks(rows, flow, serializer) if rows else ([], {})


def _as_bytes(items: list[str]) -> list[bytes]:
    return [item.encode() for item in items]


def _decode_with(serializer: Serializer, raws: list[bytes]) -> list[Any]:
    """Each raw input through a plugin's serializer; its failure is the task's, never the
    worker's (a `CoreError`, which fails just that task)."""
    try:
        return [serializer.decode(raw) for raw in raws]
    except CoreError:
        raise
    except Exception as exc:
        raise CoreError(
            f"the flow's serializer could not decode the input: {type(exc).__name__}: {exc}"
        ) from exc


class _Group:
    """Tasks whose inputs are built together: untyped ones to Python values in one codec call,
    typed ones as raw JSON decoded straight into the handler's type."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.plain: list[tuple[ClaimedTask, Any]] = []
        self.typed: list[tuple[ClaimedTask, Any]] = []

    def add(self, task: ClaimedTask, item: Any) -> None:
        if task.step_slug not in self.flow:
            task.input_error = (
                f"UnknownStepError: flow {self.flow.slug!r} has no step {task.step_slug!r}"
            )
            return
        step = self.flow.get_step(task.step_slug)
        (self.plain if step.input_type is None else self.typed).append((task, item))

    def fill(
        self,
        decode: Callable[[list[Any]], list[Any]],
        raw: Callable[[list[Any]], list[bytes]],
    ) -> None:
        _fill(self.plain, decode, lambda task, value: value)
        _fill(
            self.typed,
            raw,
            lambda task, data: self.flow.get_step(task.step_slug).convert_input_raw(data),
        )


def _fill(
    group: list[tuple[ClaimedTask, T]],
    build: Callable[[list[T]], list[Any]],
    finish: Callable[[ClaimedTask, Any], Any],
) -> None:
    """Set each task's input from `build(items)`, one call for the group. If the call fails,
    build the inputs one by one, so that one bad task fails alone and the rest go on."""
    if not group:
        return
    items = [item for _, item in group]
    try:
        built = build(items)
    except CoreError:
        built = []
        for task, item in group:
            try:
                built.append(build([item])[0])
            except CoreError as exc:
                task.input_error = f"{type(exc).__name__}: {exc}"
                built.append(None)
    for (task, _), value in zip(group, built, strict=True):
        if task.input_error is not None:
            continue
        try:
            task.input = finish(task, value)
        except PgflowError as exc:  # InputValidationError: the input does not fit the type
            task.input_error = f"{type(exc).__name__}: {exc}"
            task.input_error_final = isinstance(exc, InputValidationError)


_READ_SQL = "select msg_id from pgflow.read_with_poll(%s, %s, %s, 0)"
_START_SQL = (
    "select run_id::text, step_slug, task_index, msg_id, input::text, flow_input::text "
    "from pgflow.start_tasks(%s, %s, %s)"
)
# the contract's task record has no attempt number; one query fetches them for the batch
_ATTEMPTS_SQL = (
    "select t.run_id::text, t.step_slug, t.task_index, t.attempts_count "
    "from pgflow.step_tasks t where t.flow_slug = %s and t.message_id = any(%s)"
)


class PerTaskSource:
    """The contract's own path: read the queue (its owner-rights function, so a worker role
    needs no right on pgmq), then pgflow.start_tasks, in one transaction."""

    def __init__(self, read_vt: int = 60) -> None:
        self.read_vt = read_vt

    def claim(
        self,
        conn: psycopg.Connection[Any],
        flow: Flow,
        worker_id: UUID,
        qty: int,
        serializer: Serializer | None = None,
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        with conn.transaction():
            msg_ids = [
                row[0] for row in conn.execute(_READ_SQL, (flow.slug, self.read_vt, qty)).fetchall()
            ]
            if not msg_ids:
                return [], {}
            rows = conn.execute(_START_SQL, (flow.slug, msg_ids, worker_id)).fetchall()
            attempts = {
                (run_id, step_slug, task_index): count
                for run_id, step_slug, task_index, count in conn.execute(
                    _ATTEMPTS_SQL, (flow.slug, [row[3] for row in rows])
                )
            }
        tasks: list[ClaimedTask] = []
        run_inputs: dict[str, str] = {}
        group = _Group(flow)
        for run_id, step_slug, task_index, msg_id, input_text, flow_input_text in rows:
            attempt = attempts.get((run_id, step_slug, task_index), 1)
            task = ClaimedTask(msg_id, run_id, step_slug, task_index, attempt)
            tasks.append(task)
            # root single steps get the run input; every other step its `input`
            group.add(task, flow_input_text if flow_input_text is not None else input_text)
            if flow_input_text is not None:
                run_inputs[run_id] = flow_input_text
        if serializer is None:
            group.fill(codec.decode_many, _as_bytes)
        else:
            group.fill(lambda items: _decode_with(serializer, _as_bytes(items)), _as_bytes)
        return tasks, run_inputs
