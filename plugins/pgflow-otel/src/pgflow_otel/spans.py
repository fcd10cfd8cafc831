"""Turning what the hooks report into spans, off the worker's loop thread.

The hooks only queue what they saw (`TaskDone`, `StepEnded`, `RunEnded`) with the time they saw
it; one thread per process (`SpanWriter`) takes the queue in batches, reads what it needs from
the database in one statement per batch on a connection of its own (the run's headers, cached
per run, and for ended runs and steps their timestamps), and creates the spans with explicit
start and end times.

Every span of a run is in one trace: the trace of the span that was current where the run was
started (its `traceparent`, kept in `pgflow.run_headers`), or, for a run started without one,
a trace whose id is the run id. Parents are found without coordination: a run's span id and
each of its steps' span ids are derived from the run id (and step slug), so any worker can
parent a task span to its step's span, and the event relay a step span to its run's span,
whoever emits those. The SDK's tracer creates the ids it is given by a wrapper around its id
generator (`FixedIds`); a tracer without an id generator (not the SDK's) gets task spans only,
children of the starter's span.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from pgflow.db.connection import connect
from pgflow.db.dsn import redact

logger = logging.getLogger("pgflow.otel")

SCOPE = "pgflow_otel"

# a run's row and headers, for the runs of a batch
_RUNS = """
select r.run_id::text, r.flow_slug, r.status, r.started_at,
       coalesce(r.completed_at, r.failed_at, r.cancelled_at) as ended_at, r.error_message,
       h.headers
  from pgflow.runs r left join pgflow.run_headers h on h.run_id = r.run_id
 where r.run_id = any(%s::uuid[])
"""
_STEPS = """
select ss.run_id::text, ss.step_slug, ss.status,
       coalesce(ss.started_at, ss.completed_at, ss.failed_at, ss.skipped_at) as started_at,
       coalesce(ss.completed_at, ss.failed_at, ss.skipped_at) as ended_at,
       ss.error_message, ss.skip_reason
  from pgflow.step_states ss
  join unnest(%s::uuid[], %s::text[]) w(run_id, step_slug)
    on ss.run_id = w.run_id and ss.step_slug = w.step_slug
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- what the hooks queue -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskDone:
    """An attempt that ended in this process (handler returned, or the attempt failed)."""

    flow_slug: str
    run_id: str
    step_slug: str
    task_index: int
    attempt: int
    worker_id: str
    ended_ns: int
    duration_seconds: float
    error: str | None = None  # None: the handler returned
    will_retry: bool = False


@dataclass(frozen=True, slots=True)
class StepEnded:
    run_id: str
    step_slug: str
    status: str


@dataclass(frozen=True, slots=True)
class RunEnded:
    run_id: str
    status: str


@dataclass(slots=True)
class _Flush:
    """Everything queued before it has become spans, and the provider was flushed, once `done`
    is set."""

    done: threading.Event = field(default_factory=threading.Event)


Item = TaskDone | StepEnded | RunEnded


# -- ids ------------------------------------------------------------------------------------------


def run_span_id(run_id: str) -> int:
    return _span_id(f"run/{run_id}")


def step_span_id(run_id: str, step_slug: str) -> int:
    return _span_id(f"step/{run_id}/{step_slug}")


def _span_id(key: str) -> int:
    # 0 is the invalid span id; a hash that gives it is one in 2**64
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") or 1


class FixedIds:
    """Wraps a tracer's id generator: ids set with `fixed()` on this thread are used for the
    next span; otherwise the wrapped generator's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._local = threading.local()

    @contextlib.contextmanager
    def fixed(self, span_id: int, trace_id: int | None = None) -> Iterator[None]:
        self._local.ids = (span_id, trace_id)
        try:
            yield
        finally:
            self._local.ids = None

    def _ids(self) -> tuple[int, int | None] | None:
        ids: tuple[int, int | None] | None = getattr(self._local, "ids", None)
        return ids

    def generate_span_id(self) -> int:
        ids = self._ids()
        return ids[0] if ids is not None else int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        ids = self._ids()
        if ids is not None and ids[1] is not None:
            return ids[1]
        return int(self.inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        ids = self._ids()
        if ids is not None and ids[1] is not None:
            return False  # a run id's bits, not random ones
        return bool(getattr(self.inner, "is_trace_id_random", lambda: False)())


def _fixed_ids(tracer: Any) -> FixedIds | None:
    """The tracer's id generator, wrapped once; None when it has none (not the SDK's)."""
    found = getattr(tracer, "id_generator", None)
    if found is None:
        return None
    if not isinstance(found, FixedIds):
        found = FixedIds(found)
        tracer.id_generator = found
    return found


def tracing_configured() -> bool:
    """Whether the application set a TracerProvider (else the API's does nothing)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


# -- a run's trace --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunTrace:
    """Where a run's spans go: its trace, and the parent of its run span."""

    trace_id: int
    flags: TraceFlags
    state: TraceState
    # the starter's context (its span is the run span's parent); None: the run span is a root
    starter: otel_context.Context | None

    @classmethod
    def of(cls, run_id: str, headers: Mapping[str, str]) -> RunTrace:
        if headers:
            carried = propagate.extract(dict(headers))
            span_context = trace.get_current_span(carried).get_span_context()
            if span_context.is_valid:
                return cls(
                    span_context.trace_id,
                    span_context.trace_flags,
                    span_context.trace_state,
                    carried,
                )
        return cls(uuid.UUID(run_id).int, TraceFlags(TraceFlags.SAMPLED), TraceState(), None)

    def child_of(self, span_id: int) -> otel_context.Context:
        """A context whose current span is the (remote) span `span_id` of this trace."""
        parent = SpanContext(
            self.trace_id, span_id, is_remote=True, trace_flags=self.flags, trace_state=self.state
        )
        return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


# -- the writer thread ----------------------------------------------------------------------------


class SpanWriter:
    """One per process: queues what the hooks saw and turns it into spans in its thread."""

    def __init__(self, max_queued: int = 10_000, batch: int = 500, cached_runs: int = 4096) -> None:
        self._queue: queue.Queue[Item | _Flush | None] = queue.Queue(max_queued)
        self._batch = batch
        self._cached_runs = cached_runs
        self._headers: OrderedDict[str, Mapping[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._users = 0
        self._dsn: str | None = None
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self.dropped = 0
        self._warned_no_ids = False

    # -- from the hooks (any thread): return at once

    def put(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "spans are made slower than tasks end: %d dropped so far (the queue holds %d)",
                    self.dropped,
                    self._queue.maxsize,
                )

    # -- from pgflow_worker_started / pgflow_worker_stopped

    def start(self, dsn: str) -> None:
        """A worker of this process started; the first one's database is read for headers."""
        with self._lock:
            self._users += 1
            if self._thread is None or not self._thread.is_alive():
                self._dsn = dsn
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="pgflow-otel-spans", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """A worker of this process stopped: what it queued becomes spans and is flushed; the
        thread ends with the process's last worker."""
        self.flush(timeout)
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        thread.join(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued so far is exported (at most `timeout` seconds)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    # -- the thread

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch: list[Item | _Flush] = [first]
                stop = False
                while len(batch) < self._batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._handle(batch)
                if stop:
                    return
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _handle(self, batch: list[Item | _Flush]) -> None:
        items = [item for item in batch if not isinstance(item, _Flush)]
        if items:
            try:
                self._write(items)
            except Exception:
                logger.exception("pgflow-otel: %d span(s) lost", len(items))
        flushes = [item for item in batch if isinstance(item, _Flush)]
        if flushes:
            force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if force_flush is not None:
                try:
                    force_flush()
                except Exception:
                    logger.exception("pgflow-otel: flushing the tracer provider failed")
            for marker in flushes:
                marker.done.set()

    def _write(self, items: list[Item]) -> None:
        if not tracing_configured():
            return
        runs, steps = self._read(items)
        tracer = trace.get_tracer(SCOPE)
        ids = _fixed_ids(tracer)
        if ids is None and not self._warned_no_ids:
            self._warned_no_ids = True
            logger.warning(
                "pgflow-otel: the tracer provider (%s) takes no span ids, so runs and steps get "
                "no span of their own; task spans are children of the span that started the run",
                type(trace.get_tracer_provider()).__name__,
            )
        for item in items:
            run_trace = RunTrace.of(item.run_id, self._headers.get(item.run_id, {}))
            if isinstance(item, TaskDone):
                self._task_span(tracer, ids, run_trace, item)
            elif ids is None:
                continue
            elif isinstance(item, StepEnded):
                row = steps.get((item.run_id, item.step_slug))
                run = runs.get(item.run_id)
                # gone (pruned) or, oddly, not ended: nothing to time the span with
                if row is not None and run is not None and row["ended_at"] is not None:
                    self._step_span(tracer, ids, run_trace, run["flow_slug"], row)
            else:
                run = runs.get(item.run_id)
                if run is not None:
                    self._run_span(tracer, ids, run_trace, run)

    def _read(
        self, items: list[Item]
    ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
        """Cache the headers of every run in `items`; return the rows of the runs and steps that
        ended. One attempt, then one more on a new connection (a dropped one), then raise."""
        wanted = {item.run_id for item in items if not isinstance(item, TaskDone)}
        wanted |= {item.run_id for item in items if item.run_id not in self._headers}
        ended_steps = [
            (item.run_id, item.step_slug) for item in items if isinstance(item, StepEnded)
        ]
        if not wanted:
            return {}, {}
        for attempt in (1, 2):
            try:
                conn = self._connection()
                found = conn.execute(_RUNS, (sorted(wanted),)).fetchall()
                step_rows = (
                    conn.execute(
                        _STEPS, ([r for r, _ in ended_steps], [s for _, s in ended_steps])
                    ).fetchall()
                    if ended_steps
                    else []
                )
                break
            except psycopg.Error as exc:
                self._drop_connection()
                if attempt == 2 or self._stop.is_set():
                    raise
                logger.warning(
                    "pgflow-otel: reading runs failed (%s), trying again", type(exc).__name__
                )
                time.sleep(0.5)
        runs = {row["run_id"]: row for row in found}
        for run_id in wanted:
            row = runs.get(run_id)
            headers = row["headers"] if row is not None and row["headers"] else {}
            self._headers[run_id] = headers  # a pruned run: no headers any more
            self._headers.move_to_end(run_id)
        while len(self._headers) > self._cached_runs:
            self._headers.popitem(last=False)
        return runs, {(row["run_id"], row["step_slug"]): row for row in step_rows}

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if self._dsn is None:
                raise psycopg.OperationalError("no worker has started in this process yet")
            from psycopg.rows import dict_row

            self._conn = connect(self._dsn, autocommit=True, row_factory=dict_row)
            logger.debug("pgflow-otel reads runs at %s", redact(self._dsn))
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    # -- spans

    @staticmethod
    def _task_span(
        tracer: trace.Tracer, ids: FixedIds | None, run_trace: RunTrace, item: TaskDone
    ) -> None:
        if ids is not None:
            parent = run_trace.child_of(step_span_id(item.run_id, item.step_slug))
        else:
            parent = run_trace.starter or otel_context.Context()
        attributes: dict[str, Any] = {
            "pgflow.flow_slug": item.flow_slug,
            "pgflow.run_id": item.run_id,
            "pgflow.step_slug": item.step_slug,
            "pgflow.task_index": item.task_index,
            "pgflow.attempt": item.attempt,
            "pgflow.worker_id": item.worker_id,
        }
        if item.error is not None:
            attributes["pgflow.will_retry"] = item.will_retry
            attributes["error.type"] = item.error.partition(":")[0]
        started_ns = item.ended_ns - max(0, int(item.duration_seconds * 1e9))
        span = tracer.start_span(
            f"pgflow task {item.flow_slug}.{item.step_slug}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=started_ns,
        )
        if item.error is not None:
            span.set_status(Status(StatusCode.ERROR, item.error))
        span.end(end_time=item.ended_ns)

    @staticmethod
    def _step_span(
        tracer: trace.Tracer,
        ids: FixedIds,
        run_trace: RunTrace,
        flow_slug: str,
        row: Mapping[str, Any],
    ) -> None:
        run_id, step_slug = row["run_id"], row["step_slug"]
        attributes: dict[str, Any] = {
            "pgflow.flow_slug": flow_slug,
            "pgflow.run_id": run_id,
            "pgflow.step_slug": step_slug,
            "pgflow.status": row["status"],
        }
        if row["skip_reason"]:
            attributes["pgflow.skip_reason"] = row["skip_reason"]
        with ids.fixed(step_span_id(run_id, step_slug)):
            span = tracer.start_span(
                f"pgflow step {flow_slug}.{step_slug}",
                context=run_trace.child_of(run_span_id(run_id)),
                attributes=attributes,
                start_time=_ns(row["started_at"]),
            )
        if row["status"] == "failed":
            span.set_status(Status(StatusCode.ERROR, row["error_message"] or "the step failed"))
        span.end(end_time=_ns(row["ended_at"]))

    @staticmethod
    def _run_span(
        tracer: trace.Tracer, ids: FixedIds, run_trace: RunTrace, row: Mapping[str, Any]
    ) -> None:
        run_id = row["run_id"]
        attributes = {
            "pgflow.flow_slug": row["flow_slug"],
            "pgflow.run_id": run_id,
            "pgflow.status": row["status"],
        }
        # a run started without a trace context is a root whose trace id is the run id
        trace_id = None if run_trace.starter is not None else run_trace.trace_id
        with ids.fixed(run_span_id(run_id), trace_id):
            span = tracer.start_span(
                f"pgflow run {row['flow_slug']}",
                context=run_trace.starter or otel_context.Context(),
                attributes=attributes,
                start_time=_ns(row["started_at"]),
            )
        if row["status"] == "failed":
            span.set_status(Status(StatusCode.ERROR, row["error_message"] or "the run failed"))
        span.end(end_time=_ns(row["ended_at"] or row["started_at"]))


def _ns(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000
