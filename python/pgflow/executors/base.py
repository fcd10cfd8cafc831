"""The interface between the worker and whatever runs step handlers.

The worker claims tasks, turns each into a `Job` and hands it to an `Executor` with `submit()`.
The executor runs the step's handler somewhere (a thread, a child process, an event loop) and
reports exactly one `JobResult` per job through the `on_done` callback, unless the job was given
back by `shutdown()` or abandoned by `kill()`. The worker keeps every slot busy by asking
`free_slots()` and submitting as soon as a slot frees, never waiting for a whole batch.

Handlers may return anything; the worker encodes outputs to JSON and fails a task whose output
cannot be encoded. Executors never encode.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pgflow.context import Context, ShutdownSignal
from pgflow.errors import ExecutorBusyError, ExecutorClosedError, ExecutorError, Fail

logger = logging.getLogger("pgflow.executors")

__all__ = [
    "Executor",
    "ExecutorBusyError",
    "ExecutorClosedError",
    "ExecutorError",
    "ExecutorFactory",
    "FlowInputLoader",
    "InFlightExecutor",
    "Job",
    "JobResult",
    "OnDone",
    "Pace",
    "RunHeadersLoader",
    "RunnableStep",
    "StepResolver",
    "deliver",
    "make_context",
    "run_job",
]


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt of one task.

    Attributes:
        key: opaque to the executor and handed back in the `JobResult`; the worker uses
            `(run_id, step_slug, task_index)`. Executors never require keys to be unique.
        flow_slug, step_slug: which handler to run.
        input: the handler's input, already decoded from JSON.
        run_id, task_index, attempt: passed to the handler's `Context` (attempt is 1-based).
        timeout: seconds the handler may run (the step's effective timeout); None for no limit.
        flow_ref: "module:attribute" naming the Flow, for executors that must import the flow
            in another process (the process executor); None when the flow is not importable.
    """

    key: Hashable
    flow_slug: str
    step_slug: str
    input: Any
    run_id: str
    task_index: int
    attempt: int
    timeout: float | None
    flow_ref: str | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """How one job ended.

    `ok` with `output` on success. Otherwise `error_type` (the exception class name),
    `error_message` and the formatted `traceback` (None when there is no Python traceback, as
    for timeouts); `timed_out` tells a timeout apart from a handler error; `final` says the
    handler raised `pgflow.Fail` (no further attempt). Every field is picklable, so results can
    cross process boundaries.
    """

    key: Hashable
    ok: bool
    output: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    timed_out: bool = False
    final: bool = False

    @classmethod
    def success(cls, key: Hashable, output: Any) -> JobResult:
        return cls(key=key, ok=True, output=output)

    @classmethod
    def from_exception(cls, key: Hashable, exc: BaseException) -> JobResult:
        return cls(
            key=key,
            ok=False,
            error_type=type(exc).__name__,
            error_message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            final=isinstance(exc, Fail),
        )

    @classmethod
    def failure(
        cls, key: Hashable, error_type: str, message: str, *, final: bool = False
    ) -> JobResult:
        """A failure that did not come from a handler exception (a crashed process, say);
        `final` when another attempt would fail the same way."""
        return cls(key=key, ok=False, error_type=error_type, error_message=message, final=final)

    @classmethod
    def timeout(cls, key: Hashable, seconds: float) -> JobResult:
        return cls(
            key=key,
            ok=False,
            error_type="TimeoutError",
            error_message=f"the handler exceeded its timeout of {seconds:g}s",
            timed_out=True,
        )


class Pace:
    """A running average of how long a job takes, in seconds (None until one has finished);
    `weight` is the share of the newest duration. What sizes the worker's prefetch and the
    process executor's per-child queues."""

    __slots__ = ("seconds", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.seconds: float | None = None

    def add(self, seconds: float) -> None:
        if self.seconds is None:
            self.seconds = seconds
        else:
            self.seconds += self.weight * (seconds - self.seconds)


class RunnableStep(Protocol):
    """What an executor needs from a step (`pgflow.flow.Step` provides it).

    `invoke` calls the handler with or without the context, as its signature asks, after
    converting the input to the handler's declared type (raising `InputValidationError`). A
    worker's jobs carry inputs already decoded into that type from raw JSON, which the
    conversion hands back as they are (msgspec returns an instance of the type unchanged).
    """

    @property
    def is_async(self) -> bool: ...

    def invoke(self, value: Any, ctx: Context, *, convert: bool = True) -> Any: ...

    def invoke_async(self, value: Any, ctx: Context, *, convert: bool = True) -> Awaitable[Any]: ...


StepResolver = Callable[[str, str], RunnableStep]
"""`(flow_slug, step_slug) -> step`, supplied by the worker; may raise for unknown steps."""

FlowInputLoader = Callable[[str], Any]
"""`run_id -> the run's input`, supplied by the worker, which caches it per run."""

RunHeadersLoader = Callable[[str], Mapping[str, str]]
"""`run_id -> the run's headers` (`{}` when it has none), supplied by the worker, which caches
them per run; called only when a handler reads `ctx.headers`."""

OnDone = Callable[[JobResult], None]
"""Receives each job's result; executors may call it from any thread, so it must be quick and
thread-safe (the worker puts results on a queue)."""


class Executor(abc.ABC):
    """Runs step handlers for a worker, `concurrency` at a time.

    Life cycle: construct, `start()`, any number of `submit()` calls (each only while
    `free_slots() > 0`), then `shutdown(grace)` or `kill()`. Executors are also context
    managers: `with executor:` starts it and shuts it down without grace on exit.

    Every executor class is also an `ExecutorFactory`: constructed with keyword arguments
    `concurrency`, `resolve_step`, `load_flow_input` and `load_run_headers`.
    """

    name: ClassVar[str]
    """The name users select the executor by (`Worker(flows, executor=NAME)`)."""

    def __init__(
        self,
        *,
        concurrency: int = 1,
        resolve_step: StepResolver,
        load_flow_input: FlowInputLoader | None = None,
        load_run_headers: RunHeadersLoader | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"the {self.name} executor needs a concurrency of at least 1 "
                f"(how many handlers run at once), got {concurrency!r}"
            )
        self.concurrency = concurrency
        self.resolve_step = resolve_step
        self.load_flow_input = load_flow_input
        self.load_run_headers = load_run_headers
        self._setup()

    def _setup(self) -> None:  # noqa: B027 -- optional for subclasses, not abstract
        """Set up the executor's own state (subclasses), after the common arguments are set."""

    @abc.abstractmethod
    def start(self) -> None:
        """Acquire threads, processes or loops. Called once, before the first `submit()`."""

    @abc.abstractmethod
    def submit(self, job: Job, on_done: OnDone) -> None:
        """Start running `job` and return at once; `on_done(result)` follows exactly once.

        Raises `ExecutorBusyError` when no slot is free and `ExecutorClosedError` when the
        executor is not started or is shutting down. Never blocks on the handler (except the
        inline executor, whose purpose is to run it right here).
        """

    @abc.abstractmethod
    def free_slots(self) -> int:
        """How many more jobs `submit()` accepts now. Timed-out jobs no longer hold a slot."""

    @abc.abstractmethod
    def shutdown(self, grace: float) -> list[Job]:
        """Stop accepting jobs, set every context's `shutdown` signal, and wait up to `grace`
        seconds for the jobs in flight. Returns the jobs that did not finish; no result is
        reported for them afterwards. Idempotent: later calls return []."""

    def never_started(self) -> list[Job]:
        """After `shutdown`: those of the unfinished jobs it returned whose handler was never
        called (waiting in the executor for a worker process, say). The worker gives them back
        without counting an attempt; the others count as failed attempts. The default: none
        (every submitted job starts at once)."""
        return []

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop now: abandon every job in flight without reporting it, release resources."""

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(grace=0)


class InFlightExecutor(Executor):
    """Base for executors that keep their running jobs in `_in_flight` under `_lock`: it counts
    free slots and does the common first half of a graceful shutdown.

    Subclasses set `_lock`, `_job_left` (a condition on `_lock`, notified when a job leaves
    `_in_flight`), `_in_flight`, `_shutdown_signal`, `_accepting` and `_closed`.
    """

    _lock: threading.Lock
    _job_left: threading.Condition
    _in_flight: dict[Any, Any]
    _shutdown_signal: threading.Event
    _accepting: bool
    _closed: bool

    def free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._in_flight) if self._accepting else 0

    def _check_can_submit(self, running: bool) -> None:
        """Raise unless a job may be submitted now; call with `_lock` held. `running` says
        whether the executor's own machinery (pool, loop) is up."""
        if not self._accepting or not running:
            raise ExecutorClosedError(
                f"the {self.name} executor is not running (not started yet, or shutting down)"
            )
        if len(self._in_flight) >= self.concurrency:
            raise ExecutorBusyError(
                f"the {self.name} executor has no free slot (all {self.concurrency} are busy); "
                "submit only while free_slots() > 0"
            )

    def _stop_accepting_and_wait(
        self, grace: float, job_of: Callable[[Any], Job]
    ) -> list[Job] | None:
        """Stop taking jobs, signal the running ones, wait up to `grace` for them, and return
        (and forget) those still running. None when the executor was already shut down."""
        with self._lock:
            if self._closed or not self._accepting:
                self._closed = True
                return None
            self._accepting = False
        self._shutdown_signal.set()
        give_up_at = time.monotonic() + grace
        with self._lock:
            while self._in_flight and (remaining := give_up_at - time.monotonic()) > 0:
                self._job_left.wait(remaining)
            unfinished = [job_of(entry) for entry in self._in_flight.values()]
            self._in_flight.clear()
            self._closed = True
        return unfinished


class ExecutorFactory(Protocol):
    """Builds an executor; what `pgflow_register_executors` registers (an `Executor` subclass
    is one). Plugins' factories must accept these keyword arguments and may accept more; the
    worker also passes `load_run_headers` (a `RunHeadersLoader`) to those that accept it (by
    name, or with `**kwargs`), so factories written before it existed keep working."""

    def __call__(
        self,
        *,
        concurrency: int,
        resolve_step: StepResolver,
        load_flow_input: FlowInputLoader | None = None,
    ) -> Executor: ...


def make_context(
    job: Job,
    shutdown: ShutdownSignal,
    load_flow_input: FlowInputLoader | None,
    *,
    load_run_headers: RunHeadersLoader | None = None,
) -> Context:
    """The `Context` for one job; the flow input and the run's headers are only fetched if the
    handler reads them."""
    run_id = job.run_id
    return Context(
        run_id=run_id,
        flow_slug=job.flow_slug,
        step_slug=job.step_slug,
        task_index=job.task_index,
        attempt=job.attempt,
        shutdown=shutdown,
        load_flow_input=None if load_flow_input is None else lambda: load_flow_input(run_id),
        load_run_headers=load_run_headers,
    )


def run_job(job: Job, resolve: Callable[[], RunnableStep], ctx: Context) -> JobResult:
    """Resolve the step and run its handler here, turning any failure into a `JobResult`."""
    try:
        # Step.invoke runs an async handler to completion in a fresh event loop
        output = resolve().invoke(job.input, ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        # Also SystemExit and CancelledError: a handler must never take its thread down with it
        # or leave its slot occupied; the attempt fails like any other.
        return JobResult.from_exception(job.key, exc)
    return JobResult.success(job.key, output)


def deliver(on_done: OnDone, result: JobResult) -> None:
    """Hand a result to the worker's callback; a failing callback is logged, never raised into
    the executor's own threads (where nobody would see it)."""
    try:
        on_done(result)
    except Exception:
        logger.exception("the on_done callback failed for job %r", result.key)
