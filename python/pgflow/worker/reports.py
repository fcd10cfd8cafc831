"""Reporting task results: encode outputs, then one `pgflow.report_tasks` call per batch (or
`complete_task` / `fail_task` per task on the contract's own path). With a claim offer (free
slots of the worker), the batch goes through `pgflow.report_and_claim` instead, which also
returns the tasks the results made ready, claimed for this worker in the same transaction.

An output that has no JSON form fails its task with a message saying why; it never fails the
batch or the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import msgspec
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper

from pgflow import codec
from pgflow.errors import UnencodableValue
from pgflow.plugins.hookspecs import Serializer

logger = logging.getLogger("pgflow.worker")

# error messages are stored in the database and shown to people: keep them readable
MAX_ERROR_LENGTH = 2000
# WorkerOptions.max_output_bytes' default, for callers without options
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


@dataclass(slots=True)
class Outcome:
    """The result of one task attempt, ready to report."""

    run_id: str
    step_slug: str
    task_index: int
    # the attempt this result answers (as claimed): a stale attempt's result changes nothing
    attempt: int | None = None
    output: Any = None
    error: str | None = None
    # the flow of the task, when known (a report can claim only for a single flow)
    flow_slug: str | None = None
    # for a failure, fail_task's retry mode: None (backoff), "now" or "never"
    retry: str | None = None
    # for a failure, the handler's traceback (redacted and bounded: see tracebacks.py)
    traceback: str | None = None
    # for a failure, how its attempt ended when not as a plain failure: "timed_out" or
    # "worker_stopped" (fail_task's `outcome`)
    ended: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def error_text(error_type: str | None, message: str | None) -> str:
    text = f"{error_type or 'Error'}: {message}" if message else (error_type or "Error")
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


class RawJson(bytes):
    """JSON text already encoded, sent as it is (psycopg would otherwise encode it again)."""


class _RawJsonDumper(Dumper):
    oid = psycopg.adapters.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer:
        return bytes(obj)


psycopg.adapters.register_dumper(RawJson, _RawJsonDumper)


def encode_outputs(
    outcomes: Sequence[Outcome],
    max_bytes: int = DEFAULT_MAX_OUTPUT,
    serializers: Mapping[str, Serializer] | None = None,
) -> RawJson:
    """One JSON array with each outcome's output (null for failures), encoded once. Outcomes
    whose output cannot be encoded, or whose JSON is over `max_bytes`, are turned into failures
    in place. `serializers` names the flows whose outputs go through a plugin's serializer
    instead of msgspec (each output then on its own)."""
    if serializers and any(o.flow_slug in serializers for o in outcomes if o.flow_slug):
        return _encode_each(outcomes, max_bytes, serializers)
    try:
        encoded = codec.encode_outputs([o.output if o.ok else None for o in outcomes])
        if len(encoded) <= max_bytes:  # no output can be larger than the whole array
            return RawJson(encoded)
    except UnencodableValue:
        pass
    for outcome in outcomes:
        if not outcome.ok:
            continue
        try:
            size = len(codec.encode_value(outcome.output))
        except UnencodableValue as exc:
            _fail_output(outcome, "OutputNotJSON", f"cannot be stored as JSON: {exc}")
            continue
        if size > max_bytes:
            _fail_output(outcome, "OutputTooLarge", _too_large(size, max_bytes))
    return RawJson(codec.encode_outputs([o.output if o.ok else None for o in outcomes]))


def _encode_each(
    outcomes: Sequence[Outcome], max_bytes: int, serializers: Mapping[str, Serializer]
) -> RawJson:
    parts: list[bytes] = []
    for outcome in outcomes:
        if not outcome.ok:
            parts.append(b"null")
            continue
        serializer = serializers.get(outcome.flow_slug) if outcome.flow_slug else None
        try:
            if serializer is None:
                data = codec.encode_value(outcome.output)
            else:
                data = codec.check_json(
                    serializer.encode(outcome.output), "what the flow's serializer wrote"
                )
        except Exception as exc:  # a plugin's serializer may raise anything
            reason = (
                str(exc) if isinstance(exc, UnencodableValue) else f"{type(exc).__name__}: {exc}"
            )
            _fail_output(outcome, "OutputNotJSON", f"cannot be stored as JSON: {reason}")
            parts.append(b"null")
            continue
        if len(data) > max_bytes:
            _fail_output(outcome, "OutputTooLarge", _too_large(len(data), max_bytes))
            parts.append(b"null")
            continue
        parts.append(data)
    return RawJson(b"[" + b",".join(parts) + b"]")


def _fail_output(outcome: Outcome, kind: str, why: str) -> None:
    outcome.error = error_text(kind, f"the output of step {outcome.step_slug!r} {why}")
    outcome.output = None
    outcome.retry = "never"  # the same handler on the same input returns the same


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"is {size} bytes of JSON, over the worker's limit of {max_bytes} (max_output_bytes, "
        "--max-output-bytes): store large data elsewhere and return a reference to it"
    )


@dataclass(slots=True, frozen=True)
class ClaimOffer:
    """Room a worker offers to the tasks a report makes ready in one flow."""

    flow_slug: str
    worker_id: UUID
    qty: int
    #: qty is all the report can make ready (so a claim of qty tasks leaves none behind)
    covers_all: bool = False


class ResultSink(Protocol):
    # whether `report_and_claim` may be called (the contract's own path cannot claim)
    claims_on_report: bool

    def report(self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]) -> None: ...

    def report_and_claim(
        self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome], offer: ClaimOffer
    ) -> list[tuple[Any, ...]]:
        """Report, and return the rows (claim_tasks' shape) of the tasks claimed."""
        ...


_REPORT_SQL = (
    "select pgflow.report_tasks(%s::uuid[], %s::text[], %s::int[], %s::jsonb, %s::text[], "
    "%s::int[], %s::text[], %s::text[], %s::text[])"
)
_REPORT_AND_CLAIM_SQL = (
    "select kind, msg_id, run_id, step_slug, task_index, attempt, mode, deps, payload "
    "from pgflow.report_and_claim(%s, %s, %s, %s::uuid[], %s::text[], %s::int[], %s::jsonb, "
    "%s::text[], %s::int[], retry_modes => %s::text[], tracebacks => %s::text[], "
    "outcomes => %s::text[])"
)


def _report_args(
    outcomes: Sequence[Outcome], max_output_bytes: int, serializers: Mapping[str, Serializer]
) -> tuple[Any, ...]:
    return (
        [o.run_id for o in outcomes],
        [o.step_slug for o in outcomes],
        [o.task_index for o in outcomes],
        encode_outputs(outcomes, max_output_bytes, serializers),
        [o.error for o in outcomes],
        [o.attempt for o in outcomes],
        # NULL rather than arrays of NULLs when no result needs them (batches of completions)
        [o.retry for o in outcomes] if any(o.retry for o in outcomes) else None,
        [o.traceback for o in outcomes] if any(o.traceback for o in outcomes) else None,
        [o.ended for o in outcomes] if any(o.ended for o in outcomes) else None,
    )


class _Sink:
    """What both ways of reporting need: the output size bound and the flows' serializers."""

    def __init__(
        self,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
        serializers: Mapping[str, Serializer] | None = None,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.serializers = dict(serializers or {})


class BatchedSink(_Sink):
    """All outcomes in one call and one transaction."""

    claims_on_report = True

    def report(self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]) -> None:
        if outcomes:
            conn.execute(
                _REPORT_SQL,
                _report_args(outcomes, self.max_output_bytes, self.serializers),
                prepare=True,
            )

    def report_and_claim(
        self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome], offer: ClaimOffer
    ) -> list[tuple[Any, ...]]:
        if not outcomes:
            return []
        args = (
            offer.flow_slug,
            offer.worker_id,
            offer.qty,
            *_report_args(outcomes, self.max_output_bytes, self.serializers),
        )
        return conn.execute(_REPORT_AND_CLAIM_SQL, args, prepare=True).fetchall()


class PerTaskSink(_Sink):
    """The contract's own path: `complete_task` / `fail_task`, one transaction each."""

    claims_on_report = False

    def report(self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        # unencodable or too large: failures
        encoded = encode_outputs(outcomes, self.max_output_bytes, self.serializers)
        outputs = msgspec.json.decode(encoded, type=list[msgspec.Raw])
        for o, output in zip(outcomes, outputs, strict=True):
            if o.ok:
                conn.execute(
                    "select 1 from pgflow.complete_task(%s, %s, %s, %s, %s::int)",
                    (o.run_id, o.step_slug, o.task_index, RawJson(bytes(output)), o.attempt),
                )
            else:
                conn.execute(
                    "select 1 from pgflow.fail_task(%s, %s, %s, %s, %s::int, %s::text, "
                    "%s::text, %s::text)",
                    (
                        o.run_id,
                        o.step_slug,
                        o.task_index,
                        o.error,
                        o.attempt,
                        o.retry,
                        o.traceback,
                        o.ended,
                    ),
                )

    def report_and_claim(
        self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome], offer: ClaimOffer
    ) -> list[tuple[Any, ...]]:
        raise NotImplementedError("the per-task path reports without claiming")
