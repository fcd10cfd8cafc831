"""Claiming tasks: the batched path (one round trip per batch) and the per-task contract path.

Both return `ClaimedTask`s whose `input` is what the handler receives. The batched path gets
raw JSON text from `pgflow.claim_tasks` (each run input and dependency output once per batch)
and builds every input in one call to the Rust core (or its Python twin); the per-task path
reads the queue (`pgflow.read_with_poll`) and calls `pgflow.start_tasks`, as any client of the contract would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import UUID

import psycopg

from pgflow import codec
from pgflow.errors import CoreError

T = TypeVar("T")

MODE_FLOW_INPUT = 0
MODE_DEPS = 1
MODE_MAP = 2
MODE_PAYLOAD = 3


@dataclass(slots=True)
class ClaimedTask:
    """One started task: what to run, and with which input.

    `input_error` is set instead of `input` when the input could not be built (the task is then
    failed without running its handler, and the rest of the batch goes on).
    """

    msg_id: int
    run_id: str
    step_slug: str
    task_index: int
    attempt: int
    input: Any = None
    input_error: str | None = None


class TaskSource(Protocol):
    """Claims up to `qty` tasks of a flow for a worker."""

    def claim(
        self, conn: psycopg.Connection[Any], flow_slug: str, worker_id: UUID, qty: int
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        """Returns the tasks and the raw run inputs seen on the way (run_id -> JSON text),
        which the worker keeps so that `ctx.flow_input` needs no query for root steps."""
        ...


_CLAIM_SQL = (
    "select kind, msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload "
    "from pgflow.claim_tasks(%s, %s, %s)"
)


class BatchedSource:
    """`pgflow.claim_tasks`: one round trip, raw JSON, inputs built in one core call."""

    def claim(
        self, conn: psycopg.Connection[Any], flow_slug: str, worker_id: UUID, qty: int
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        rows = conn.execute(_CLAIM_SQL, (flow_slug, worker_id, qty), prepare=True).fetchall()
        if not rows:
            return [], {}
        tasks: list[ClaimedTask] = []
        specs: list[tuple[int, str, Sequence[str], int]] = []
        assembled: list[ClaimedTask] = []
        raw_payloads: list[str] = []
        with_payload: list[ClaimedTask] = []
        blobs: dict[str, str] = {}
        for kind, msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload in rows:
            if kind == "blob":
                blobs[f"{run_id}:{step_slug}"] = payload
                continue
            task = ClaimedTask(msg_id, run_id, step_slug, task_index, attempt)
            tasks.append(task)
            if mode == MODE_PAYLOAD:
                with_payload.append(task)
                raw_payloads.append(payload)
            else:
                assembled.append(task)
                specs.append((mode, run_id, deps, task_index))
        _fill_inputs(assembled, specs, blobs)
        _fill_payloads(with_payload, raw_payloads)
        run_inputs = {key[:-1]: raw for key, raw in blobs.items() if key.endswith(":")}
        return tasks, run_inputs


def _fill_inputs(
    tasks: list[ClaimedTask],
    specs: list[tuple[int, str, Sequence[str], int]],
    blobs: dict[str, str],
) -> None:
    _fill(tasks, specs, lambda some: codec.assemble_and_decode(some, blobs))


def _fill_payloads(tasks: list[ClaimedTask], payloads: list[str]) -> None:
    _fill(tasks, payloads, codec.decode_many)


def _fill(tasks: list[ClaimedTask], items: list[T], build: Callable[[list[T]], list[Any]]) -> None:
    """Set each task's input from `build(items)`, one call for the batch. If the batch fails,
    build the inputs one by one, so that one bad task fails alone and the rest go on."""
    if not tasks:
        return
    try:
        values = build(items)
    except CoreError:
        for task, item in zip(tasks, items, strict=True):
            try:
                task.input = build([item])[0]
            except CoreError as exc:
                task.input_error = f"{type(exc).__name__}: {exc}"
        return
    for task, value in zip(tasks, values, strict=True):
        task.input = value


# pgflow.read_with_poll reads the flow's queue with its owner's rights: a worker role needs no
# rights on pgmq's tables (0: do not wait, the worker's loop does its own waiting)
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
    """The contract's own path: read the queue, then pgflow.start_tasks (one transaction)."""

    def __init__(self, read_vt: int = 60) -> None:
        self.read_vt = read_vt

    def claim(
        self, conn: psycopg.Connection[Any], flow_slug: str, worker_id: UUID, qty: int
    ) -> tuple[list[ClaimedTask], dict[str, str]]:
        with conn.transaction():
            msg_ids = [
                row[0] for row in conn.execute(_READ_SQL, (flow_slug, self.read_vt, qty)).fetchall()
            ]
            if not msg_ids:
                return [], {}
            rows = conn.execute(_START_SQL, (flow_slug, msg_ids, worker_id)).fetchall()
            attempts = {
                (run_id, step_slug, task_index): count
                for run_id, step_slug, task_index, count in conn.execute(
                    _ATTEMPTS_SQL, (flow_slug, [row[3] for row in rows])
                )
            }
            tasks: list[ClaimedTask] = []
            run_inputs: dict[str, str] = {}
            raws: list[str] = []
            for run_id, step_slug, task_index, msg_id, input_text, flow_input_text in rows:
                attempt = attempts.get((run_id, step_slug, task_index), 1)
                task = ClaimedTask(msg_id, run_id, step_slug, task_index, attempt)
                tasks.append(task)
                # root single steps get the run input; every other step its `input`
                raws.append(flow_input_text if flow_input_text is not None else input_text)
                if flow_input_text is not None:
                    run_inputs[run_id] = flow_input_text
        _fill_payloads(tasks, raws)
        return tasks, run_inputs
