"""The process executor: handlers run in child processes, one per core by default.

For CPU-bound handlers that hold the GIL. Children are started with the multiprocessing "spawn"
method, so they share nothing with the worker but what is sent to them: each job carries a flow
reference ("module:attribute"), and a child imports the flow by it once and keeps its steps.

`concurrency` is how many jobs the executor takes at once (its slots); they run on
`min(concurrency, cores)` children. Jobs go to the children in chunks: each child keeps a short
queue of its own (about `_CHILD_QUEUE_SECONDS` of work at the measured pace, at most
`_MAX_CHILD_QUEUE` jobs), so it never waits for the worker between jobs, and the rest wait in the
executor until a child has room; nothing more is queued behind a job that has run far longer
than the pace says (though jobs already queued behind it wait for it: with durations that vary
widely, a job can wait behind a long one). Results come back one per job as each finishes, so a
child that is terminated loses no result it has produced.

A handler past its timeout (counted from the moment its child starts it, which the child
records in a small shared array) has its process terminated and replaced, and the attempt fails
with `TimeoutError`; jobs queued behind it go to other children. A child that dies for any other
reason fails the job it was running with error type `WorkerProcessDied`, and is replaced too.
Children ignore SIGINT, so a Ctrl-C in a terminal reaches only the worker, which shuts down
gracefully.

One manager thread in the worker process watches every child: it hands out jobs, receives
results, forwards the children's log records to the worker's logging, answers their requests for
a run's flow input or headers (from the worker's loaders, which cache them per run), enforces
deadlines and replaces dead children. In each child a receiver thread reads the pipe, so the
worker never blocks writing to a child that is busy.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
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
    Pace,
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

# A child's own queue holds about this many seconds of work at the measured pace...
_CHILD_QUEUE_SECONDS = 0.02
# ...and never more than this many jobs (nor fewer than one).
_MAX_CHILD_QUEUE = 64
# weight of the newest handler duration in the running average that sizes the children's queues
_PACE_WEIGHT = 0.2

# Message kinds. Worker to child: ("jobs", [(seq, Job), ...]), ("flow_input", ok, value or error
# text), ("run_headers", ok, dict or error text), None (exit). Child to worker: ("ready",),
# ("done", seq, seconds, pickled JobResult), ("log", LogRecord), ("flow_input", run_id),
# ("run_headers", run_id).
_JOBS = "jobs"
_READY = "ready"
_DONE = "done"
_LOG = "log"
_FLOW_INPUT = "flow_input"
_RUN_HEADERS = "run_headers"
# what a child may ask the worker for, as the error messages name it
_REQUESTS = {_FLOW_INPUT: "flow input", _RUN_HEADERS: "headers"}
# the slots of a child's shared clock: the sequence number of the job it runs, and its start


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended for an unknown reason"
    if exitcode < 0:
        try:
            return f"was killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


_CLOCK_SEQ = 0
_CLOCK_STARTED = 1


class _Child:
    """The worker's view of one child process. Guarded by the executor's lock."""

    __slots__ = ("assigned", "clock", "conn", "eof", "kill_at", "process", "ready", "send_lock")

    def __init__(self, process: BaseProcess, conn: Connection, clock: Any) -> None:
        self.process = process
        self.conn = conn
        self.send_lock = threading.Lock()
        # (sequence number of the job it runs, monotonic time it started it), written by the child
        self.clock = clock
        self.ready = False
        self.eof = False
        # jobs sent to the child and not finished, in the order it runs them
        self.assigned: dict[int, tuple[Job, OnDone]] = {}
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

    def running(self) -> tuple[int, float] | None:
        """(sequence number, start) of the job the child runs now, if it started one of the jobs
        it was given; the two values are read so that a torn read is never taken for a start."""
        first = next(iter(self.assigned), None)
        if first is None:
            return None
        seq = self.clock[_CLOCK_SEQ]
        started = self.clock[_CLOCK_STARTED]
        if self.clock[_CLOCK_SEQ] != seq or int(seq) != first:
            return None
        return first, started


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
    """Runs up to `concurrency` jobs at once on `min(concurrency, cores)` child processes."""

    name: ClassVar[str] = "process"

    def _setup(self) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self.processes = min(self.concurrency, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._job_left = threading.Condition(self._lock)
        self._children: list[_Child] = []
        # submitted jobs no child has yet, in order (jobs of a dead child go back to the front)
        self._backlog: collections.deque[tuple[Job, OnDone]] = collections.deque()
        # the jobs that shutdown abandoned before a child began them
        self._never_started: list[Job] = []
        self._outstanding = 0  # jobs submitted and not finished (backlog and children)
        self._seqs = itertools.count(1)
        self._numbers = itertools.count(1)
        self._shutdown_signal = _SharedFlag(self._mp)
        # how long a job takes in a child, which sizes the children's queues
        self._pace = Pace(_PACE_WEIGHT)
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
        children = [self._spawn() for _ in range(self.processes)]
        with self._lock:
            self._children.extend(children)
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
            if self._outstanding >= self.concurrency:
                raise ExecutorBusyError(
                    f"the process executor has no free slot (all {self.concurrency} are taken); "
                    "submit only while free_slots() > 0"
                )
            self._outstanding += 1
            self._backlog.append((job, on_done))
            # one wake-up per burst of submissions: the manager sends them in chunks
            if len(self._backlog) == 1:
                self._wake_manager()

    def free_slots(self) -> int:
        with self._lock:
            return self.concurrency - self._outstanding if self._accepting else 0

    def shutdown(self, grace: float) -> list[Job]:
        with self._lock:
            if self._closed or not self._accepting:
                self._closed = True
                return []
            self._accepting = False
        self._shutdown_signal.set()
        give_up_at = time.monotonic() + grace
        with self._lock:
            while self._outstanding and (remaining := give_up_at - time.monotonic()) > 0:
                self._job_left.wait(remaining)
            unfinished = self._abandon_all()
        self._stop_manager()
        if unfinished:
            logger.warning(
                "the process executor stopped with %d job(s) unfinished after %gs of grace; "
                "their processes were terminated",
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

    def never_started(self) -> list[Job]:
        with self._lock:
            return list(self._never_started)

    # -- helpers called with the lock held ----------------------------------------------------

    def _abandon_all(self) -> list[Job]:
        unfinished = [job for job, _ in self._backlog]
        self._never_started = list(unfinished)
        self._backlog.clear()
        for child in self._children:
            if child.assigned:
                # the job a child runs is its first; when the child's clock cannot tell
                # (a torn read), the first counts as started: an attempt too many is safer than
                # a job that crashes children being given back for ever
                running = child.running()
                first = running[0] if running is not None else next(iter(child.assigned))
                for seq, (job, _) in child.assigned.items():
                    unfinished.append(job)
                    if seq != first:
                        self._never_started.append(job)
                child.assigned.clear()
                # A child still running an abandoned handler is not asked to exit: it is
                # terminated with the others that do not exit in time.
                child.kill_at = -math.inf
        self._outstanding = 0
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

    def _queue_length(self) -> int:
        """How many jobs a child may hold: about `_CHILD_QUEUE_SECONDS` of work."""
        if self._pace.seconds is None:
            return 1
        wanted = int(_CHILD_QUEUE_SECONDS / max(self._pace.seconds, 1e-6))
        return max(1, min(_MAX_CHILD_QUEUE, wanted))

    def _take_chunks(self) -> list[tuple[_Child, list[tuple[int, Job]]]]:
        """Assign backlog jobs to ready children with room, the emptiest first."""
        if not self._backlog or self._stopping:
            return []
        room = self._queue_length()
        now = time.monotonic()
        # a job that runs far longer than the pace says may run for long yet: queue nothing
        # behind it (other children, or its own when it is done, take the backlog)
        slow_after = max(4 * (self._pace.seconds or 0.0), 0.005)
        ready = [
            c
            for c in self._children
            if c.ready
            and c.kill_at is None
            and not c.eof
            and ((running := c.running()) is None or now - running[1] < slow_after)
        ]
        # children with nothing to do, ready or still starting (a starting one is free soon)
        idle = sum(1 for c in self._children if not c.assigned and c.kill_at is None)
        chunks: dict[int, list[tuple[int, Job]]] = {}
        while self._backlog and ready:
            child = min(ready, key=lambda c: len(c.assigned))
            if len(child.assigned) >= room:
                break
            if child.assigned and len(self._backlog) <= idle:
                break  # an idle child will take these rather than queue them behind a job
            if not child.assigned:
                idle -= 1
            job, on_done = self._backlog.popleft()
            seq = next(self._seqs)
            child.assigned[seq] = (job, on_done)
            chunks.setdefault(id(child), []).append((seq, job))
        by_id = {id(c): c for c in ready}
        return [(by_id[key], jobs) for key, jobs in chunks.items()]

    # -- children ------------------------------------------------------------------------------

    def _spawn(self) -> _Child:
        parent_end, child_end = self._mp.Pipe(duplex=True)
        clock = self._mp.RawArray("d", 2)
        clock[_CLOCK_SEQ] = -1.0
        process = self._mp.Process(
            target=_child_main,
            args=(
                child_end,
                self._shutdown_signal,
                _logging_levels(),
                self.load_flow_input is not None,
                clock,
                self.load_run_headers is not None,
            ),
            name=f"pgflow-process-{next(self._numbers)}",
            # Not daemonic, so handlers may start processes of their own; the atexit hook
            # registered by start() ends the children instead.
            daemon=False,
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end, clock)

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
                lost = list(self._backlog)
                for child in self._children:
                    lost.extend(child.assigned.values())
                self._abandon_all()
            for job, on_done in lost:
                message = f"the process executor failed: {type(exc).__name__}: {exc}"
                deliver(on_done, JobResult.failure(job.key, "ExecutorError", message))
        finally:
            self._tear_down()

    def _manage_once(self) -> bool:
        """One round: hand out jobs, act on deadlines, then wait for messages, exits or the next
        deadline."""
        now = time.monotonic()
        expired: list[_Child] = []
        to_kill: list[_Child] = []
        with self._lock:
            if self._stopping:
                return False
            chunks = self._take_chunks()
            soonest = math.inf
            for child in self._children:
                if child.kill_at is not None:
                    if child.kill_at <= now:
                        to_kill.append(child)
                        child.kill_at = math.inf  # killed below; now only its exit is awaited
                    else:
                        soonest = min(soonest, child.kill_at)
                    continue
                deadline = self._deadline(child, now)
                if deadline is None:
                    continue
                if deadline <= now:
                    expired.append(child)
                else:
                    soonest = min(soonest, deadline)
            if self._restarts_due:
                soonest = min(soonest, self._restart_at)
            self._next_check = -math.inf if expired or to_kill else soonest
            children = list(self._children)
        for child, jobs in chunks:
            self._send_jobs(child, jobs)
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

    def _deadline(self, child: _Child, now: float) -> float | None:
        """When the job the child runs (or starts next) times out, at the earliest; with the
        lock held. A job not started yet cannot time out before now + its timeout: the manager
        looks again then."""
        first = next(iter(child.assigned.values()), None)
        if first is None or first[0].timeout is None:
            return None
        timeout = first[0].timeout
        running = child.running()
        if running is None:
            return now + timeout
        return running[1] + timeout

    def _send_jobs(self, child: _Child, jobs: list[tuple[int, Job]]) -> None:
        """Send a chunk of jobs, each pickled on its own, so one that cannot be pickled fails
        alone (and one the child cannot unpickle fails there, as that job's result)."""
        payload: list[tuple[int, bytes]] = []
        for seq, job in jobs:
            try:
                payload.append((seq, pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)))
            except Exception as exc:
                self._finish(
                    child,
                    seq,
                    JobResult.failure(
                        job.key,
                        type(exc).__name__,
                        f"the job could not be sent to a worker process: {exc}",
                    ),
                )
        if payload:
            child.send((_JOBS, payload))  # a child gone meanwhile gives its jobs back at exit

    def _receive(self, child: _Child) -> None:
        while True:
            try:
                if not child.conn.poll():
                    return
                message = child.conn.recv()
            except (EOFError, OSError):
                child.eof = True
                return
            kind = message[0]
            if kind == _DONE:
                _, seq, seconds, payload = message
                self._finish(child, seq, self._load_result(child, seq, payload), seconds)
            elif kind == _LOG:
                self._forward_log(message[1])
            elif kind == _FLOW_INPUT:
                self._answer(child, _FLOW_INPUT, self.load_flow_input, message[1])
            elif kind == _RUN_HEADERS:
                loader = None if self.load_run_headers is None else self._plain_run_headers
                self._answer(child, _RUN_HEADERS, loader, message[1])
            elif kind == _READY:
                with self._lock:
                    child.ready = True
                    self._startup_failures = 0

    def _load_result(self, child: _Child, seq: int, payload: bytes) -> JobResult:
        try:
            result = pickle.loads(payload)
        except Exception as exc:
            # Pickled fine in the child but cannot be rebuilt here (a class only the child can
            # import, say).
            with self._lock:
                entry = child.assigned.get(seq)
            return JobResult.failure(
                entry[0].key if entry else None,
                type(exc).__name__,
                f"the handler's result could not be received from its worker process: {exc}; "
                "return JSON-like values",
                final=True,
            )
        assert isinstance(result, JobResult)
        return result

    def _finish(
        self, child: _Child, seq: int, result: JobResult, seconds: float | None = None
    ) -> None:
        with self._lock:
            entry = child.assigned.pop(seq, None)
            if entry is None:
                return  # given back by shutdown, or already timed out
            if result.key is None:  # the child could not even read the job
                result = dataclasses.replace(result, key=entry[0].key)
            self._outstanding -= 1
            if seconds is not None:
                self._pace.add(seconds)
            self._job_left.notify_all()
        deliver(entry[1], result)

    def _requeue(self, entries: Iterable[tuple[Job, OnDone]]) -> None:
        """Jobs a child was given but never started go back to the front of the backlog."""
        self._backlog.extendleft(reversed(list(entries)))

    def _time_out(self, child: _Child) -> None:
        with self._lock:
            running = child.running()
            if running is None or child.kill_at is not None:
                return
            seq, started = running
            job, on_done = child.assigned[seq]
            assert job.timeout is not None  # only jobs with a timeout get a deadline
            if time.monotonic() < started + job.timeout:
                return
            del child.assigned[seq]
            self._outstanding -= 1
            self._requeue(child.assigned.values())
            child.assigned.clear()
            child.kill_at = time.monotonic() + _KILL_AFTER
            self._job_left.notify_all()
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
        # results the child sent before it died count
        if not child.eof:
            self._receive(child)
        with self._lock:
            if child not in self._children:
                return
            self._children.remove(child)
            running = child.running()
            lost: tuple[Job, OnDone] | None = None
            if running is not None:
                lost = child.assigned.pop(running[0])
                self._outstanding -= 1
            self._requeue(child.assigned.values())
            child.assigned.clear()
            replaced = child.kill_at is not None
            self._job_left.notify_all()
        child.conn.close()
        description = _describe_exit(child.process.exitcode)
        if lost is not None:
            job, on_done = lost
            deliver(
                on_done,
                JobResult.failure(
                    job.key,
                    "WorkerProcessDied",
                    f"the worker process (pid {child.process.pid}) {description} while running "
                    "the handler; a new process replaces it",
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

    def _forward_log(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)

    def _plain_run_headers(self, run_id: str) -> dict[str, str]:
        # a plain dict for the pipe: the worker's read-only mapping does not pickle
        assert self.load_run_headers is not None
        return dict(self.load_run_headers(run_id))

    def _answer(
        self, child: _Child, kind: str, loader: Callable[[str], Any] | None, run_id: str
    ) -> None:
        """Answer a child's request for a run's flow input or headers (`kind`) with `loader`."""
        what = _REQUESTS[kind]
        if loader is None:
            child.send((kind, False, f"the worker has no {what} loader"))
            return

        def answer() -> None:
            # In its own thread: fetching may take a database round trip, which must not hold
            # up the other children's results and deadlines.
            try:
                value = loader(run_id)
            except Exception as exc:
                child.send((kind, False, f"{type(exc).__name__}: {exc}"))
            else:
                if not child.send((kind, True, value)):
                    logger.debug("a worker process left before receiving its %s", what)

        threading.Thread(target=answer, name=f"pgflow-process-{kind}", daemon=True).start()

    def _tear_down(self) -> None:
        with self._lock:
            children = list(self._children)
            self._children.clear()
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
    """State of one child process: its connection to the worker, the jobs it was given and the
    steps it loaded.

    A receiver thread reads the pipe all the time (jobs into a queue, answers to flow-input and
    headers requests into another), so the worker's writes never wait for a handler to finish;
    the main thread runs the jobs one after another and sends each result as soon as it has it.
    """

    def __init__(
        self,
        conn: Connection,
        shutdown: ShutdownSignal,
        has_loader: bool,
        clock: Any,
        has_headers_loader: bool,
    ) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        # Handler threads may ask at the same time: one request/answer at a time, so an answer
        # is always to the request just sent, whatever its kind.
        self._request_lock = threading.Lock()
        self._shutdown = shutdown
        self._has_loader = has_loader
        self._has_headers_loader = has_headers_loader
        self._clock = clock
        self._steps: dict[tuple[str, str], RunnableStep] = {}
        self._jobs: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def send(self, message: object) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _read_pipe(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                if message is None:
                    break
                if message[0] == _JOBS:
                    for item in message[1]:
                        self._jobs.put(item)
                elif message[0] in _REQUESTS:
                    self._answers.put((message[1], message[2]))
        except (EOFError, OSError):
            pass  # the worker is gone
        finally:
            self._jobs.put(None)
            self._answers.put((False, "the worker closed the connection"))

    def serve(self) -> None:
        threading.Thread(target=self._read_pipe, name="pgflow-child-receiver", daemon=True).start()
        self.send((_READY,))
        while True:
            item = self._jobs.get()
            if item is None:
                return
            seq, data = item
            started = time.monotonic()
            # the start first, then the job's number: the manager reads them the other way round
            self._clock[_CLOCK_STARTED] = started
            self._clock[_CLOCK_SEQ] = seq
            result = self._run(data)
            self._report(seq, time.monotonic() - started, result)

    def _run(self, data: bytes) -> JobResult:
        try:
            job = pickle.loads(data)
        except Exception as exc:
            return JobResult.failure(
                None,
                type(exc).__name__,
                f"the job could not be received by its worker process: {exc}",
            )
        loader = self._fetch_flow_input if self._has_loader else None
        headers = self._fetch_run_headers if self._has_headers_loader else None
        ctx = make_context(job, self._shutdown, loader, load_run_headers=headers)
        return run_job(job, lambda: self._resolve(job), ctx)

    def _report(self, seq: int, seconds: float, result: JobResult) -> None:
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            payload = pickle.dumps(_unsendable_output(result.key, exc))
        self.send((_DONE, seq, seconds, payload))

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
        return self._ask(_FLOW_INPUT, run_id)

    def _fetch_run_headers(self, run_id: str) -> Mapping[str, str]:
        headers: Mapping[str, str] = self._ask(_RUN_HEADERS, run_id)
        return headers

    def _ask(self, kind: str, run_id: str) -> Any:
        with self._request_lock:
            self.send((kind, run_id))
            ok, value = self._answers.get()
        if not ok:
            raise ExecutorError(
                f"the {_REQUESTS[kind]} of run {run_id} could not be fetched: {value}"
            )
        return value


def _unsendable_output(key: Hashable, exc: Exception) -> JobResult:
    return JobResult.failure(
        key,
        type(exc).__name__,
        f"the handler's output could not be sent from its worker process: {exc}; return "
        "JSON-like values (dicts, lists, strings, numbers, booleans, None) or msgspec Structs",
        final=True,  # the same handler on the same input returns the same
    )


def _logging_levels() -> dict[str, int]:
    """The levels set on the worker's loggers (root under ""), for its children to copy.

    Copying only the root's level would drop what the worker logs from a more verbose logger
    than the root: the CLI keeps the root at WARNING and `pgflow` (so `ctx.logger`) at INFO.
    """
    levels = {"": logging.getLogger().level}
    for name, item in logging.Logger.manager.loggerDict.items():
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET:
            levels[name] = item.level
    return levels


def _child_main(
    conn: Connection,
    shutdown: ShutdownSignal,
    log_levels: dict[str, int],
    has_loader: bool,
    clock: Any,
    has_headers_loader: bool,
) -> None:
    """Entry point of a child process (must stay importable at module level for spawn)."""
    # Ctrl-C in a terminal signals the whole process group; the worker alone decides to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runtime = _ChildRuntime(conn, shutdown, has_loader, clock, has_headers_loader)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(runtime.send)]
    for name, level in log_levels.items():
        logging.getLogger(name or None).setLevel(level)
    # OSError/ValueError: the worker closed the connection while we wrote; it is shutting down.
    with contextlib.suppress(OSError, ValueError):
        runtime.serve()
