"""The process executor: each handler runs in one of `concurrency` child processes.

For CPU-bound handlers that hold the GIL. Children are started with the multiprocessing "spawn"
method, so they share nothing with the worker but what is sent to them: each job carries a flow
reference ("module:attribute"), and a child imports the flow by it once and keeps its steps.

A child runs one job at a time. A handler past its timeout has its process terminated and
replaced, and the attempt fails with `TimeoutError`; a child that dies for any other reason fails
its job with error type `WorkerProcessDied`, and is replaced too. Children ignore SIGINT, so a
Ctrl-C in a terminal reaches only the worker, which shuts down gracefully.

One manager thread in the worker process watches every child: it receives results, forwards the
children's log records to the worker's logging, answers their requests for a run's flow input,
enforces deadlines and replaces dead children.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

from pgflow.context import ShutdownSignal
from pgflow.executors.base import (
    Executor,
    ExecutorBusyError,
    ExecutorClosedError,
    ExecutorError,
    Job,
    JobResult,
    OnDone,
    RunnableStep,
    deliver,
    logger,
    make_context,
    run_job,
)
from pgflow.flow import load_flow

# A terminated child that is still alive after this long is killed outright.
_KILL_AFTER = 1.0
# At shutdown, how long idle children get to exit after being asked to.
_EXIT_WAIT = 2.0
# Children dying before they are ready are restarted after a growing delay, up to this much.
_MAX_RESTART_DELAY = 30.0

# Message kinds. Worker to child: ("job", Job), ("flow_input", ok, value or error text), None
# (exit). Child to worker: ("ready",), ("result", JobResult), ("log", LogRecord),
# ("flow_input", run_id).
_JOB = "job"
_READY = "ready"
_RESULT = "result"
_LOG = "log"
_FLOW_INPUT = "flow_input"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended for an unknown reason"
    if exitcode < 0:
        try:
            return f"was killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class _Child:
    """The worker's view of one child process. Guarded by the executor's lock."""

    __slots__ = (
        "conn",
        "deadline",
        "eof",
        "job",
        "kill_at",
        "on_done",
        "process",
        "ready",
        "send_lock",
    )

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.send_lock = threading.Lock()
        self.ready = False
        self.eof = False
        self.job: Job | None = None
        self.on_done: OnDone | None = None
        # Set from the moment the child is ready and busy with a job that has a timeout.
        self.deadline: float | None = None
        # Set once the child was terminated; it is killed if still alive then.
        self.kill_at: float | None = None

    def send(self, message: object) -> bool:
        """Send without raising when the child is gone (its exit is handled elsewhere)."""
        try:
            with self.send_lock:
                self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True


class _SharedFlag:
    """A shutdown signal shared with the children that never blocks the setter.

    `multiprocessing.Event.set()` waits until every process sleeping on the event has woken up,
    so a child terminated while waiting on it (at its timeout, say) would hang the executor's
    shutdown forever. This flag is one shared byte: setting it is a plain write, and waiting
    polls it.
    """

    _POLL = 0.05

    def __init__(self, mp: Any) -> None:
        self._value = mp.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is None:
                time.sleep(self._POLL)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._POLL, left))
        return True


class ProcessExecutor(Executor):
    """Runs up to `concurrency` handlers at once, each in its own child process."""

    name: ClassVar[str] = "process"

    def _setup(self) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._job_left = threading.Condition(self._lock)
        self._children: list[_Child] = []
        self._idle: list[_Child] = []
        self._numbers = itertools.count(1)
        self._shutdown_signal = _SharedFlag(self._mp)
        # A pipe that wakes the manager from its wait; created by start().
        self._wake_read = self._wake_write = -1
        self._manager: threading.Thread | None = None
        self._started = False
        self._accepting = False
        self._closed = False
        self._stopping = False
        self._killing = False
        # When the sleeping manager will next look at deadlines; -inf while it is awake.
        self._next_check = -math.inf
        self._startup_failures = 0
        self._restarts_due = 0
        self._restart_at = 0.0

    # -- worker-facing API ---------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise ExecutorError("the process executor can be started only once")
            self._started = True
            self._wake_read, self._wake_write = os.pipe()
            os.set_blocking(self._wake_write, False)
        children = [self._spawn() for _ in range(self.concurrency)]
        with self._lock:
            self._children.extend(children)
            self._idle.extend(children)
            self._accepting = True
        self._manager = threading.Thread(
            target=self._manage, name="pgflow-process-manager", daemon=True
        )
        self._manager.start()
        # Registered after multiprocessing's own exit hook, so it runs first: without it, an
        # interpreter exiting with the executor still running would wait for children forever.
        atexit.register(self.kill)

    def submit(self, job: Job, on_done: OnDone) -> None:
        with self._lock:
            if not self._accepting:
                raise ExecutorClosedError(
                    "the process executor is not running (not started yet, or shutting down)"
                )
            if not self._idle:
                raise ExecutorBusyError(
                    "the process executor has no free slot (every process is busy or "
                    "restarting); submit only while free_slots() > 0"
                )
            child = self._idle.pop()
            child.job, child.on_done = job, on_done
            if child.ready and job.timeout is not None:
                child.deadline = time.monotonic() + job.timeout
                if child.deadline < self._next_check:
                    self._wake_manager()
        try:
            with child.send_lock:
                child.conn.send((_JOB, job))
        except (OSError, ValueError):
            pass  # the child is gone: the manager sees it exit and fails the job
        except Exception as exc:
            # The job itself cannot be pickled; the child never saw it.
            with self._lock:
                child.job = child.on_done = None
                child.deadline = None
                self._idle.append(child)
            deliver(
                on_done,
                JobResult.failure(
                    job.key,
                    type(exc).__name__,
                    f"the job could not be sent to a worker process: {exc}",
                ),
            )

    def free_slots(self) -> int:
        with self._lock:
            return len(self._idle) if self._accepting else 0

    def shutdown(self, grace: float) -> list[Job]:
        with self._lock:
            if self._closed or not self._accepting:
                self._closed = True
                return []
            self._accepting = False
        self._shutdown_signal.set()
        give_up_at = time.monotonic() + grace
        with self._lock:
            while self._busy() and (remaining := give_up_at - time.monotonic()) > 0:
                self._job_left.wait(remaining)
            unfinished = self._abandon_all()
        self._stop_manager()
        if unfinished:
            logger.warning(
                "the process executor stopped with %d handler(s) still running after %gs of "
                "grace; their processes were terminated",
                len(unfinished),
                grace,
            )
        return unfinished

    def kill(self) -> None:
        with self._lock:
            if not self._started or self._closed:
                self._closed = True
                return
            self._accepting = False
            self._killing = True
            self._abandon_all()
        self._stop_manager()

    # -- helpers called with the lock held ----------------------------------------------------

    def _busy(self) -> bool:
        return any(child.job is not None for child in self._children)

    def _abandon_all(self) -> list[Job]:
        unfinished = []
        for child in self._children:
            if child.job is not None:
                unfinished.append(child.job)
                child.job = child.on_done = None
                child.deadline = None
                # A child still running an abandoned handler is not asked to exit: it is
                # terminated with the others that do not exit in time.
                child.kill_at = -math.inf
        self._closed = True
        self._stopping = True
        # A shutdown() waiting out its grace (when kill() comes meanwhile) may stop waiting.
        self._job_left.notify_all()
        self._wake_manager()
        return unfinished

    def _wake_manager(self) -> None:
        """Called with the lock held, so the pipe cannot be closed meanwhile."""
        if self._wake_write < 0:
            return
        # A full pipe already holds wake-ups: the manager will wake anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    # -- children ------------------------------------------------------------------------------

    def _spawn(self) -> _Child:
        parent_end, child_end = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=_child_main,
            args=(
                child_end,
                self._shutdown_signal,
                logging.getLogger().getEffectiveLevel(),
                self.load_flow_input is not None,
            ),
            name=f"pgflow-process-{next(self._numbers)}",
            # Not daemonic, so handlers may start processes of their own; the atexit hook
            # registered by start() ends the children instead.
            daemon=False,
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def _stop_manager(self) -> None:
        # The manager was woken by _abandon_all(): it tears the children down and exits.
        if self._manager is not None and self._manager is not threading.current_thread():
            self._manager.join()
        atexit.unregister(self.kill)

    def _manage(self) -> None:
        try:
            while self._manage_once():
                pass
        except Exception as exc:
            logger.exception("the process executor's manager thread failed; it stops")
            with self._lock:
                self._accepting = False
                lost = [(c.job, c.on_done) for c in self._children if c.job and c.on_done]
                self._abandon_all()
            for job, on_done in lost:
                message = f"the process executor failed: {type(exc).__name__}: {exc}"
                deliver(on_done, JobResult.failure(job.key, "ExecutorError", message))
        finally:
            self._tear_down()

    def _manage_once(self) -> bool:
        """One round: act on deadlines, then wait for messages, exits or the next deadline."""
        now = time.monotonic()
        expired: list[_Child] = []
        to_kill: list[_Child] = []
        with self._lock:
            if self._stopping:
                return False
            soonest = math.inf
            for child in self._children:
                if child.kill_at is not None:
                    if child.kill_at <= now:
                        to_kill.append(child)
                        child.kill_at = math.inf  # killed below; now only its exit is awaited
                    else:
                        soonest = min(soonest, child.kill_at)
                elif child.deadline is not None:
                    if child.deadline <= now:
                        expired.append(child)
                    else:
                        soonest = min(soonest, child.deadline)
            if self._restarts_due:
                soonest = min(soonest, self._restart_at)
            self._next_check = -math.inf if expired or to_kill else soonest
            children = list(self._children)
        for child in to_kill:
            child.process.kill()
        for child in expired:
            self._time_out(child)
        if self._restarts_due and self._restart_at <= now:
            self._restart_due_children()
        if expired or to_kill:
            return True
        waitables: list[Any] = [self._wake_read]
        for child in children:
            waitables.append(child.process.sentinel)
            if not child.eof:
                waitables.append(child.conn)
        timeout = None if soonest == math.inf else max(0.0, soonest - now)
        ready = multiprocessing.connection.wait(waitables, timeout)
        if self._wake_read in ready:
            os.read(self._wake_read, 4096)
        for child in children:
            if child.conn in ready:
                self._receive(child)
        for child in children:
            if child.process.sentinel in ready:
                self._child_exited(child)
        return True

    def _receive(self, child: _Child) -> None:
        while True:
            try:
                if not child.conn.poll():
                    return
                message = child.conn.recv()
            except (EOFError, OSError):
                child.eof = True
                return
            except Exception as exc:
                # Pickled fine in the child but cannot be rebuilt here (a class only the child
                # can import, say). With one job per child, it was that job's result.
                self._finish(
                    child,
                    JobResult.failure(
                        child.job.key if child.job is not None else None,
                        type(exc).__name__,
                        f"the handler's result could not be received from its worker process: "
                        f"{exc}; return JSON-like values",
                    ),
                )
                continue
            kind = message[0]
            if kind == _RESULT:
                self._finish(child, message[1])
            elif kind == _LOG:
                self._forward_log(message[1])
            elif kind == _FLOW_INPUT:
                self._answer_flow_input(child, message[1])
            elif kind == _READY:
                self._on_ready(child)

    def _on_ready(self, child: _Child) -> None:
        with self._lock:
            child.ready = True
            self._startup_failures = 0
            if child.job is not None and child.job.timeout is not None:
                child.deadline = time.monotonic() + child.job.timeout

    def _finish(self, child: _Child, result: JobResult) -> None:
        with self._lock:
            on_done = child.on_done
            child.job = child.on_done = None
            child.deadline = None
            if on_done is None:
                return  # given back by shutdown, or already timed out
            if child.kill_at is None:
                self._idle.append(child)
            self._job_left.notify_all()
        deliver(on_done, result)

    def _time_out(self, child: _Child) -> None:
        with self._lock:
            job, on_done = child.job, child.on_done
            if job is None or on_done is None or child.deadline is None:
                return
            child.job = child.on_done = None
            child.deadline = None
            child.kill_at = time.monotonic() + _KILL_AFTER
            self._job_left.notify_all()
        assert job.timeout is not None  # only jobs with a timeout get a deadline
        child.process.terminate()
        logger.warning(
            "%s.%s task %d of run %s exceeded its timeout of %gs: the attempt is failed and its "
            "process (pid %s) terminated",
            job.flow_slug,
            job.step_slug,
            job.task_index,
            job.run_id,
            job.timeout,
            child.process.pid,
        )
        deliver(on_done, JobResult.timeout(job.key, job.timeout))
        self._schedule_restart(0.0)

    def _child_exited(self, child: _Child) -> None:
        child.process.join(_KILL_AFTER)
        with self._lock:
            if child not in self._children:
                return
            self._children.remove(child)
            if child in self._idle:
                self._idle.remove(child)
            job, on_done = child.job, child.on_done
            child.job = child.on_done = None
            replaced = child.kill_at is not None
            if job is not None:
                self._job_left.notify_all()
        child.conn.close()
        description = _describe_exit(child.process.exitcode)
        if job is not None and on_done is not None:
            phase = "running the handler" if child.ready else "starting"
            deliver(
                on_done,
                JobResult.failure(
                    job.key,
                    "WorkerProcessDied",
                    f"the worker process (pid {child.process.pid}) {description} while {phase}; "
                    "a new process replaces it",
                ),
            )
        if replaced:
            return
        if child.ready:
            logger.warning(
                "worker process %s %s; starting a new one", child.process.pid, description
            )
            self._schedule_restart(0.0)
            return
        self._startup_failures += 1
        delay = min(_MAX_RESTART_DELAY, 0.5 * 2 ** (self._startup_failures - 1))
        logger.error(
            "worker process %s %s before it was ready (%d time(s) in a row; see its output "
            "above); starting a new one in %gs",
            child.process.pid,
            description,
            self._startup_failures,
            delay,
        )
        self._schedule_restart(delay)

    def _schedule_restart(self, delay: float) -> None:
        """Start one more child in `delay` seconds (the manager does it in its next round)."""
        at = time.monotonic() + delay
        with self._lock:
            self._restart_at = min(self._restart_at, at) if self._restarts_due else at
            self._restarts_due += 1

    def _restart_due_children(self) -> None:
        with self._lock:
            count, self._restarts_due = self._restarts_due, 0
            if self._stopping:
                return
        for started in range(count):
            try:
                child = self._spawn()
            except OSError as exc:
                logger.error("cannot start a worker process (%s); trying again in 1s", exc)
                with self._lock:
                    self._restarts_due += count - started
                    self._restart_at = time.monotonic() + 1.0
                return
            with self._lock:
                self._children.append(child)
                self._idle.append(child)

    def _forward_log(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)

    def _answer_flow_input(self, child: _Child, run_id: str) -> None:
        loader = self.load_flow_input
        if loader is None:
            child.send((_FLOW_INPUT, False, "the worker has no flow input loader"))
            return

        def answer() -> None:
            # In its own thread: fetching may take a database round trip, which must not hold
            # up the other children's results and deadlines.
            try:
                value = loader(run_id)
            except Exception as exc:
                child.send((_FLOW_INPUT, False, f"{type(exc).__name__}: {exc}"))
            else:
                if not child.send((_FLOW_INPUT, True, value)):
                    logger.debug("a worker process left before receiving its flow input")

        threading.Thread(target=answer, name="pgflow-process-flow-input", daemon=True).start()

    def _tear_down(self) -> None:
        with self._lock:
            children = list(self._children)
            self._children.clear()
            self._idle.clear()
            killing = self._killing
        for child in children:
            if killing:
                child.process.kill()
            elif child.kill_at is not None or not child.send(None):
                child.process.terminate()
        give_up_at = time.monotonic() + _EXIT_WAIT
        for child in children:
            child.process.join(max(0.0, give_up_at - time.monotonic()))
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(_KILL_AFTER)
            child.conn.close()
            child.process.close()
        with self._lock:
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1


# -- the child side ------------------------------------------------------------------------------


class _ForwardLogs(logging.Handler):
    """Sends a child's log records to the worker, where they go through its logging setup."""

    def __init__(self, send: Callable[[object], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Arguments and exception objects may not pickle: send them as text.
            record = copy.copy(record)
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self._send((_LOG, record))
        except Exception:
            self.handleError(record)


class _ChildRuntime:
    """State of one child process: its connection to the worker and the steps it loaded."""

    def __init__(self, conn: Connection, shutdown: ShutdownSignal, has_loader: bool) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        # Handler threads may read flow inputs at the same time: one request/answer at a time.
        self._request_lock = threading.Lock()
        self._shutdown = shutdown
        self._has_loader = has_loader
        self._steps: dict[tuple[str, str], RunnableStep] = {}

    def send(self, message: object) -> None:
        with self._send_lock:
            self._conn.send(message)

    def serve(self) -> None:
        self.send((_READY,))
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return  # the worker is gone
            if message is None:
                return
            _, job = message
            self._report(self._run(job))

    def _run(self, job: Job) -> JobResult:
        loader = self._fetch_flow_input if self._has_loader else None
        ctx = make_context(job, self._shutdown, loader)
        return run_job(job, lambda: self._resolve(job), ctx)

    def _report(self, result: JobResult) -> None:
        try:
            self.send((_RESULT, result))
        except (OSError, ValueError):
            raise  # the connection is gone, not the output
        except Exception as exc:
            # Pickling failed before anything was written, so the stream is still intact.
            self.send((_RESULT, _unsendable_output(result.key, exc)))

    def _resolve(self, job: Job) -> RunnableStep:
        if job.flow_ref is None:
            raise ExecutorError(
                f"the process executor cannot run step {job.flow_slug}.{job.step_slug}: the "
                "worker gave no flow reference ('module:attribute') to import the flow by in "
                "its processes; define the flow at module level in an importable module"
            )
        cache_key = (job.flow_ref, job.step_slug)
        step = self._steps.get(cache_key)
        if step is None:
            step = load_flow(job.flow_ref).get_step(job.step_slug)
            self._steps[cache_key] = step
        return step

    def _fetch_flow_input(self, run_id: str) -> Any:
        with self._request_lock:
            self.send((_FLOW_INPUT, run_id))
            _, ok, value = self._conn.recv()
        if not ok:
            raise ExecutorError(f"the flow input of run {run_id} could not be fetched: {value}")
        return value


def _unsendable_output(key: Hashable, exc: Exception) -> JobResult:
    return JobResult.failure(
        key,
        type(exc).__name__,
        f"the handler's output could not be sent from its worker process: {exc}; return "
        "JSON-like values (dicts, lists, strings, numbers, booleans, None) or msgspec Structs",
    )


def _child_main(
    conn: Connection, shutdown: ShutdownSignal, log_level: int, has_loader: bool
) -> None:
    """Entry point of a child process (must stay importable at module level for spawn)."""
    # Ctrl-C in a terminal signals the whole process group; the worker alone decides to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runtime = _ChildRuntime(conn, shutdown, has_loader)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(runtime.send)]
    root.setLevel(log_level)
    # OSError/ValueError: the worker closed the connection while we wrote; it is shutting down.
    with contextlib.suppress(OSError, ValueError):
        runtime.serve()
