"""The worker: claims tasks, runs their handlers on an executor, reports the results.

One loop thread owns the database connection. Each turn it reports every result that has come
in (one batched call: results that arrive while a call is in flight ride along on the next one),
starts waiting tasks on the executor's free slots, then claims with one call. A claim may take
more than the free slots (prefetch, bounded by `WorkerOptions.prefetch` and by about a second of
work), so claims stay batched when the executor has few slots; waiting tasks get their timeout
renewed when they wait long, and are given back at once when the worker stops. A report carries
an offer of free slots (set aside until it is answered), so the tasks its results made ready
come back claimed with the acknowledgement: a hop from one step to the next costs one round
trip. It sleeps only when there is nothing to report, start or claim, and wakes on a result, a
NOTIFY from the listener, or the poll timer. Heartbeats, deprecation checks, stalled-task
recovery and the firing of schedules' due ticks (`schedules.py`: it sleeps until the next tick
is due, or `LOOK_INTERVAL` at most) run on timers in the same loop.

Nothing is lost when things go wrong: a handler error fails the task (and the SQL retries it);
a lost connection is reopened with backoff while results wait in memory; a worker killed
outright leaves started tasks that `requeue_stalled_tasks` (run by one worker at a time)
puts back in the queue.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg

from pgflow.codec import DEFAULT_SERIALIZER
from pgflow.db.compile import check_has_steps
from pgflow.db.connection import commit_asynchronously, connect
from pgflow.db.dsn import redact, resolve_dsn
from pgflow.db.listener import EVENTS_CHANNEL, TASKS_CHANNEL, ChannelListener, task_listener
from pgflow.db.migrations import check_schema
from pgflow.errors import PgflowError, PluginError, one_line
from pgflow.executors.base import Executor, Job, JobResult, Pace
from pgflow.flow import Flow, load_flow
from pgflow.plugins.events import EventRelay
from pgflow.plugins.hookspecs import Serializer
from pgflow.plugins.manager import (
    TaskHooks,
    create_executor,
    executor_factory,
    fire_worker_started,
    fire_worker_stopped,
    get_plugin_manager,
    get_serializer,
    has_event_sinks,
    task_hooks,
)
from pgflow.worker import session
from pgflow.worker.claims import (
    BatchedSource,
    ClaimedTask,
    PerTaskSource,
    TaskSource,
    rows_to_tasks,
)
from pgflow.worker.options import WorkerOptions
from pgflow.worker.reporter import Reporter
from pgflow.worker.reports import (
    BatchedSink,
    ClaimOffer,
    Outcome,
    PerTaskSink,
    ResultSink,
    error_text,
)
from pgflow.worker.run_headers import RunHeadersCache
from pgflow.worker.run_inputs import RunInputCache
from pgflow.worker.schedules import LOOK_INTERVAL, ScheduleFirer, describe_sync, sync_schedules
from pgflow.worker.tracebacks import clean_traceback, redact_secrets

logger = logging.getLogger("pgflow.worker")

# Only small reports claim for the worker. A hop of a chain is a report of one result; a big
# report is throughput work, where the loop's own claim on its own connection runs in parallel
# with the report and does better (measured on the diamond bench: about 12% fewer runs/s when
# every report claims).
OFFER_BATCH_LIMIT = 16

# Prefetched tasks (claimed, waiting for a free slot) are held for at most about this many
# seconds of work at the pace the worker measures, so a slow handler does not make a worker
# hoard tasks that an idle worker could run.
PREFETCH_HORIZON = 1.0
# A claim hides a task's message for its step's timeout + 2 s. A prefetched task that has waited
# this long gets its whole timeout again (pgflow.extend_tasks), before the margin runs out.
EXTEND_AFTER = 1.0
# The inline executor runs queued tasks on the loop's own thread: after this many seconds, the
# loop reports what has finished before it starts more.
START_BUDGET = 0.05
# A report costs a round trip and a durable commit. While at least this many tasks are still
# running, results keep coming: the loop lets up to this many gather before it reports...
REPORT_GATHER = 16
# ...but holds none longer than this many seconds (a chain's hop, with nothing else running, is
# reported at once).
REPORT_HOLD = 0.02
# weight of the newest handler duration in the running average the prefetch bound uses
_PACE_WEIGHT = 0.5


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    claims: int = 0
    reports: int = 0
    # tasks that came back claimed with the acknowledgement of a report
    claimed_on_report: int = 0
    # prefetched tasks that waited long enough to have their timeout renewed, or were given back
    extended: int = 0
    released: int = 0
    # the most tasks one claim took
    largest_claim: int = 0
    # runs this worker started for schedules' ticks
    ticks_fired: int = 0
    # queries for a run's headers (a handler read ctx.headers): at most one per run it caches
    run_headers_fetched: int = 0


class Worker:
    """Runs the tasks of one or more flows.

    `flows` are `Flow` objects or import paths ("module:attr"); the process executor needs
    import paths (or flows defined in importable modules) to load handlers in its children.
    `dsn` (else `PGFLOW_DSN`, else `DATABASE_URL`; `"embedded"` for the embedded server) names
    the database. Settings come from `options` (a `WorkerOptions`), with any of its fields
    given as keyword arguments on top: `Worker(flows, executor="process", concurrency=4)`.
    """

    def __init__(
        self,
        flows: Iterable[Flow | str],
        *,
        dsn: str | None = None,
        options: WorkerOptions | None = None,
        install_signal_handlers: bool = True,
        **settings: Any,
    ) -> None:
        self.flows: dict[str, Flow] = {}
        self.flow_refs: dict[str, str | None] = {}
        for item in flows:
            flow = load_flow(item) if isinstance(item, str) else item
            check_has_steps(flow.slug, len(flow))
            if flow.slug in self.flows:
                raise PgflowError(f"flow {flow.slug!r} was given twice; give each flow once")
            self.flows[flow.slug] = flow
            self.flow_refs[flow.slug] = item if isinstance(item, str) else _import_path(flow)
        if not self.flows:
            raise PgflowError("a worker needs at least one flow")
        self.options = (options or WorkerOptions()).replace(**settings)
        self.dsn, self.dsn_source = resolve_dsn(dsn)
        self.install_signal_handlers = install_signal_handlers
        opts = self.options

        # an eighth of what one claim may take, so refills stay prompt but not tiny
        self._min_claim = max(1, min(opts.claim_size, opts.concurrency + opts.prefetch) // 8)
        self.source: TaskSource = PerTaskSource() if opts.per_task else BatchedSource()
        # the flows whose values go through a plugin's serializer (the default needs none): a
        # flow's own choice, else the worker's; one that is not installed is refused here
        self.serializers = _serializers(self.flows, opts.serializer)
        self.sink: ResultSink = (
            PerTaskSink(opts.max_output_bytes, self.serializers)
            if opts.per_task
            else BatchedSink(opts.max_output_bytes, self.serializers)
        )
        self.worker_ids = {slug: uuid.uuid4() for slug in self.flows}
        self.stats = WorkerStats()

        self._results: collections.deque[JobResult] = collections.deque()
        self._pending: list[Outcome] = []
        self._pending_since = 0.0  # when the oldest pending result came in
        # slots offered to reports not answered yet (the loop thread's alone), and the answers
        self._reserved = 0
        self._ready_bounds: dict[tuple[str, str], int] = {}
        self._handbacks: collections.deque[
            tuple[Sequence[ClaimOffer], list[tuple[Any, ...]] | None]
        ] = collections.deque()
        self._reporter: Reporter | None = None
        self._wake = threading.Event()
        self._flushed = threading.Event()
        self._notified = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started = threading.Event()
        # (run_id, step_slug, task_index) -> (flow slug, task, start) of every job the executor
        # runs
        self._in_flight: dict[tuple[str, str, int], tuple[str, ClaimedTask, float]] = {}
        # prefetched: (flow slug, task, when claimed or last extended), waiting for a free slot
        self._queued: collections.deque[tuple[str, ClaimedTask, float]] = collections.deque()
        # how long a handler takes, which bounds the prefetch
        self._pace = Pace(_PACE_WEIGHT)
        self._run_inputs = RunInputCache(self._fetch_run_input)
        self._run_headers = RunHeadersCache(self._fetch_run_headers)
        self._input_lock = threading.Lock()
        self._input_conn: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._executor: Executor | None = None
        self._listener: ChannelListener | None = None
        self._events: EventRelay | None = None
        self._signals = 0
        # what plugins observe of tasks; none until the worker starts
        self._task_hooks = TaskHooks()
        self._schedules = ScheduleFirer(self.flows)

    # -- public API --------------------------------------------------------------------------

    @property
    def started(self) -> threading.Event:
        """Set once the worker has registered and begun claiming (handy in tests)."""
        return self._started

    def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT, `stop()`, or deprecation)."""
        restore = self._install_signals() if self.install_signal_handlers else None
        try:
            self._run()
        finally:
            if restore is not None:
                restore()

    def stop(self) -> None:
        """Ask for a graceful stop: no new claims; in-flight tasks get the grace period."""
        self._stopping.set()
        self._wake.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # -- main loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        get_plugin_manager()  # load plugins early: one that fails to load is logged at start
        executor_factory(self.options.executor)  # an unknown executor fails before any SQL
        self._task_hooks = task_hooks()
        self._conn = self._connect_with_backoff()
        check_schema(self._conn, redact(self.dsn))
        self._compile_flows()
        self._register()
        if self.options.schedules:
            self._sync_schedules()
        self._executor = create_executor(
            self.options.executor,
            concurrency=self.options.concurrency,
            resolve_step=self._resolve_step,
            load_flow_input=self._load_flow_input,
            load_run_headers=self._run_headers.get,
        )
        self._executor.start()
        self._reporter = Reporter(
            self.dsn, self.sink, self._on_flushed, max_batch=max(self.options.claim_size, 100)
        )
        self._reporter.start()
        if self.options.listen:
            self._listener = task_listener(self.dsn, self.flows, self._on_notify)
            self._listener.start()
            # runs started right after `started` is set must not wait for the next poll
            self._listener.wait_alive(timeout=5.0)
        if has_event_sinks():
            self._events = EventRelay(self.dsn)
            self._events.start()
        logger.info(
            "worker started: flows %s, executor %s x%d, batch %d, %s path, database %s",
            ", ".join(self.flows),
            self.options.executor,
            self.options.concurrency,
            self.options.claim_size,
            "per-task" if self.options.per_task else "batched",
            redact(self.dsn),
        )
        fire_worker_started(self._worker_id_texts(), list(self.flows.values()), self.dsn)
        self._started.set()
        try:
            self._loop()
            self._drain()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        assert self._executor is not None
        next_heartbeat = time.monotonic() + self.options.heartbeat_interval
        next_requeue = time.monotonic()
        # never, for a worker told to leave schedules to the others
        next_schedules = time.monotonic() if self.options.schedules else math.inf
        next_poll = 0.0
        more_work = True
        dry = False  # the last claim found nothing
        while not self._stopping.is_set():
            # a NOTIFY means there may be tasks to claim (results wake us too, but say nothing
            # about the queue); remember it before clearing
            notified = self._notified.is_set()
            self._notified.clear()
            self._wake.clear()
            now = time.monotonic()
            if now >= next_heartbeat:
                self._db(self._heartbeat)
                next_heartbeat = now + self.options.heartbeat_interval
            if now >= next_requeue:
                self._db(self._requeue_stalled)
                next_requeue = now + self.options.requeue_interval
            if now >= next_schedules:
                wait = self._db(self._fire_schedules)
                next_schedules = time.monotonic() + (LOOK_INTERVAL if wait is None else wait)
            self._take_handbacks()
            if self._collect() and self._report_due():
                self._flush()
            self._start_queued()
            if self._flushed.is_set():
                self._flushed.clear()
                # completions may have made new tasks ready; after a claim that found nothing,
                # only their NOTIFY says so (a map's tasks make nothing ready until the last)
                more_work = more_work or not dry
            free = self._executor.free_slots()
            prefetch = self._prefetch_limit()
            room = self._room(free, prefetch)
            # A claim costs a round trip whatever its size: while plenty of tasks are still
            # running or waiting, let a few slots free up (or half the prefetch drain) first
            # instead of claiming them a few at a time.
            idle = not self._in_flight and not self._queued
            worth_claiming = room >= max(self._min_claim, prefetch // 2) or idle
            if room > 0 and worth_claiming and (more_work or notified or now >= next_poll):
                want = min(room, self.options.claim_size)
                claimed = self._db(functools.partial(self._claim, want)) or 0
                next_poll = time.monotonic() + self._poll_interval()
                more_work = claimed >= want
                dry = claimed == 0
                if claimed:
                    continue
            if self._results or self._handbacks or (self._queued and free > 0):
                continue
            timeout = (
                max(0.0, next_poll - time.monotonic()) if free > 0 else self.options.poll_interval
            )
            timeout = min(timeout, max(0.0, next_heartbeat - time.monotonic()))
            timeout = min(timeout, max(0.0, next_schedules - time.monotonic()))
            if self._pending:  # held results: report them in time
                timeout = min(
                    timeout, max(0.0, self._pending_since + REPORT_HOLD - time.monotonic())
                )
            self._wake.wait(timeout)

    def _on_notify(self) -> None:
        # called from the listener thread: tasks may be waiting, claim on the next turn
        self._notified.set()
        self._wake.set()

    def _poll_interval(self) -> float:
        # without a live listener nothing wakes us: poll more often
        if self._listener is not None and self._listener.alive:
            return self.options.poll_interval
        return min(self.options.poll_interval, 0.25)

    def _drain(self) -> None:
        """Graceful stop: no more claims; let in-flight tasks finish within the grace period."""
        assert self._executor is not None
        logger.info(
            "stopping: %d task(s) in flight, grace %.0fs",
            len(self._in_flight),
            self.options.shutdown_grace,
        )
        grace = self.options.shutdown_grace
        deadline = time.monotonic() + grace
        self._release_queued()  # prefetched tasks go back at once, for other workers
        # The executor's shutdown tells the handlers now (ctx.shutdown) and waits out the grace
        # period on its own thread, while this one goes on reporting what finishes meanwhile.
        executor = self._executor
        stopped = threading.Event()

        def stop_executor() -> None:
            try:
                executor.shutdown(grace=grace)
            finally:
                stopped.set()
                self._wake.set()

        threading.Thread(target=stop_executor, name="pgflow-executor-stop", daemon=True).start()
        while (
            (self._in_flight or self._reserved or not stopped.is_set())
            and time.monotonic() < deadline
            and self._signals < 2
        ):
            # tasks claimed by a report in flight are given back like the other waiting ones
            self._take_handbacks()
            if self._collect():
                self._flush()
            self._release_queued()
            if not self._in_flight and not self._reserved and stopped.is_set():
                break
            self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        if self._signals >= 2:
            executor.kill()  # a second signal: no more waiting
        stopped.wait(5.0)  # the executor returns once its grace period is over
        self._take_handbacks()
        self._release_queued()
        if self._collect():
            self._flush()
        self._give_back_unfinished()
        assert self._reporter is not None
        if not self._reporter.close(timeout=max(5.0, deadline - time.monotonic())):
            logger.warning(
                "some results could not be reported; those tasks will be retried after their "
                "timeout"
            )

    def _give_back_unfinished(self) -> None:
        """The tasks still running when the grace period ended go back to the queue at once,
        for other workers: those whose handler never began as if never claimed (no attempt
        counted), the others as failed attempts ("worker stopped") queued again without backoff
        (so a task longer than the grace period cannot come back for ever across deploys)."""
        assert self._executor is not None
        if not self._in_flight:
            return
        never = {job.key for job in self._executor.never_started()}
        entries, self._in_flight = list(self._in_flight.items()), {}
        unstarted = [entry for key, entry in entries if key in never]
        for flow_slug, released in self._per_flow(session.release_tasks, unstarted).items():
            self.stats.released += released
            logger.info("gave back %d task(s) of flow %s that never started", released, flow_slug)
        stopped = [entry for key, entry in entries if key not in never]
        if not stopped:
            return
        error = error_text(
            "WorkerStopped",
            f"the worker stopped before the task finished (grace period "
            f"{self.options.shutdown_grace:g}s); retried at once while attempts are left",
        )
        now = time.monotonic()
        for flow_slug, task, started in stopped:
            outcome = Outcome(
                task.run_id,
                task.step_slug,
                task.task_index,
                task.attempt,
                error=error,
                flow_slug=flow_slug,
                retry="now",
                ended="worker_stopped",
            )
            self._pending.append(outcome)
            self._task_failed(flow_slug, task, outcome, now - started)
        self._flush()
        logger.warning(
            "%d task(s) did not finish within the grace period: their attempt is failed "
            "(worker stopped) and they are queued again at once for other workers",
            len(stopped),
        )

    def _poke_listeners(self) -> None:
        """Wake the listener threads so they see the stop now, not at their next check."""
        if self._conn is None or self._conn.closed:
            return
        with contextlib.suppress(psycopg.Error):
            session.wake_listeners(self._conn, (TASKS_CHANNEL, EVENTS_CHANNEL))

    def _shutdown(self) -> None:
        if self._reporter is not None and self._signals < 2:
            self._reporter.close(timeout=5.0)
        for listener in (self._listener, self._events):
            if listener is not None:
                listener.request_stop()
        self._poke_listeners()
        if self._listener is not None:
            self._listener.stop()
        if self._events is not None:
            self._events.stop()
        if self._executor is not None:
            self._executor.kill()
        try:
            if self._conn is not None and not self._conn.closed:
                for worker_id in self.worker_ids.values():
                    session.mark_stopped(self._conn, worker_id)
        except psycopg.Error as exc:
            logger.warning("could not mark the worker stopped: %s", type(exc).__name__)
        for conn in (self._conn, self._input_conn):
            if conn is not None:
                conn.close()
        fire_worker_stopped(self._worker_id_texts())
        self._stopped.set()
        logger.info(
            "worker stopped: %d completed, %d failed", self.stats.completed, self.stats.failed
        )

    def _worker_id_texts(self) -> dict[str, str]:
        return {slug: str(worker_id) for slug, worker_id in self.worker_ids.items()}

    # -- database steps ----------------------------------------------------------------------

    def _connect_with_backoff(self) -> psycopg.Connection[Any]:
        delay = 0.1
        while True:
            try:
                conn = connect(self.dsn, autocommit=True, prepare_threshold=None)
                # Claims, heartbeats and requeues need not wait for the WAL flush: if the server
                # crashes before a claim is durable, the task is simply claimed again after its
                # visibility timeout. Results go through the reporter's connection, which keeps
                # synchronous commit, so no completion is ever acknowledged and then lost.
                commit_asynchronously(conn)
                return conn
            except PgflowError as exc:
                if self._stopping.is_set() or not self._started.is_set():
                    raise
                logger.warning("%s; retrying in %.1fs", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.options.max_backoff)

    def _db(self, action: Callable[[], Any]) -> Any:
        """Run a database step; on a lost connection, reconnect with backoff and try again."""
        delay = 0.1
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    try:
                        self._conn = self._connect_with_backoff()
                    except PgflowError:
                        if self._stopping.is_set():
                            return None  # the stop came while the database was down
                        raise
                    self._register()
                    logger.info("database connection restored")
                return action()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                logger.warning(
                    "database connection lost (%s); reconnecting",
                    one_line(exc, 300) or type(exc).__name__,
                )
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if self._stopping.is_set():
                    # stopping: claims and heartbeats are not worth waiting for a database
                    # that is down (results still get the reporter's retries)
                    return None
                self._stopping.wait(delay)
                delay = min(delay * 2, self.options.max_backoff)

    def _compile_flows(self) -> None:
        assert self._conn is not None
        for slug, flow in self.flows.items():
            status = session.compile_flow(self._conn, flow, self.options.allow_data_loss)
            if status == "recompiled":
                logger.warning("flow %s was recompiled; its old runs were deleted", slug)
            else:
                logger.info("flow %s %s", slug, status)

    def _sync_schedules(self) -> None:
        """Make each flow's code-declared schedules in the database match its `schedules`."""
        assert self._conn is not None
        for slug, flow in self.flows.items():
            outcome = sync_schedules(self._conn, flow, self.serializers.get(slug))
            for level, line in describe_sync(slug, outcome):
                logger.log(level, "%s", line)

    def _fire_schedules(self) -> float:
        """Fire the due ticks of the flows' schedules; seconds until the next look."""
        assert self._conn is not None
        firing = self._schedules.fire(self._conn)
        self.stats.ticks_fired += len(firing.fired)
        return firing.wait

    def _register(self) -> None:
        assert self._conn is not None
        name = f"{socket.gethostname()}:{os.getpid()}"
        for slug, worker_id in self.worker_ids.items():
            session.register(self._conn, worker_id, slug, name)

    def _heartbeat(self) -> None:
        assert self._conn is not None
        for worker_id in self.worker_ids.values():
            deprecated = session.heartbeat(self._conn, worker_id)
            if deprecated is None:
                logger.warning("worker %s had no row (pruned?); registering again", worker_id)
                self._register()
            elif deprecated:
                logger.info("worker %s was deprecated; finishing in-flight tasks", worker_id)
                self.stop()

    def _requeue_stalled(self) -> None:
        assert self._conn is not None
        requeued, given_up = session.requeue_stalled(self._conn)
        if requeued:
            logger.warning("requeued %d stalled task(s)", requeued)
        if given_up:
            logger.error(
                "%d task(s) stalled too many times and failed like tasks out of attempts", given_up
            )

    def _claim(self, qty: int) -> int:
        assert self._conn is not None and self._executor is not None
        total = 0
        for slug in self._flows_round_robin():
            if qty - total <= 0:
                break
            claim = functools.partial(
                self.source.claim,
                self._conn,
                self.flows[slug],
                qty=qty - total,
                serializer=self.serializers.get(slug),
            )
            try:
                tasks, run_inputs = claim(worker_id=self.worker_ids[slug])
            except psycopg.Error as exc:
                if not session.is_unregistered_worker(exc):
                    raise
                logger.warning("this worker's row was gone (pruned?); registering again")
                self._register()  # a new worker id
                tasks, run_inputs = claim(worker_id=self.worker_ids[slug])
            self.stats.claims += 1
            self.stats.largest_claim = max(self.stats.largest_claim, len(tasks))
            if run_inputs:
                self._run_inputs.offer(run_inputs)
            for task in tasks:
                self._submit(slug, task)
            total += len(tasks)
        self.stats.claimed += total
        return total

    def _flows_round_robin(self) -> list[str]:
        slugs = list(self.flows)
        if len(slugs) > 1:
            shift = self.stats.claims % len(slugs)
            slugs = slugs[shift:] + slugs[:shift]
        return slugs

    def _submit(self, flow_slug: str, task: ClaimedTask) -> None:
        if self._task_hooks.claimed is not None:
            self._task_hooks.claimed(**self._task_fields(flow_slug, task))
        if task.input_error is not None:
            outcome = Outcome(
                task.run_id,
                task.step_slug,
                task.task_index,
                task.attempt,
                error=task.input_error,
                flow_slug=flow_slug,
                retry="never" if task.input_error_final else None,
            )
            self._pending.append(outcome)
            self._task_failed(flow_slug, task, outcome, 0.0)
            self._wake.set()
            return
        self._queued.append((flow_slug, task, time.monotonic()))

    def _start_queued(self) -> None:
        """Start waiting tasks while the executor has free slots (renewing the timeout of those
        that waited long first)."""
        assert self._executor is not None
        if not self._queued or self._executor.free_slots() <= 0:
            return
        began = time.monotonic()
        if began - self._queued[0][2] >= EXTEND_AFTER:
            self._extend_waiting(began)
        while self._queued and self._executor.free_slots() > 0:
            if self._stopping.is_set():
                return  # waiting tasks are given back, not started
            if self._results and time.monotonic() - began >= START_BUDGET:
                self._wake.set()  # the inline executor: report what is done, then go on
                return
            flow_slug, task, _ = self._queued.popleft()
            self._start(flow_slug, task)

    def _extend_waiting(self, now: float) -> None:
        """Renew the hide and timeout of every task that has waited `EXTEND_AFTER` or more."""
        late = [entry for entry in self._queued if now - entry[2] >= EXTEND_AFTER]
        self._queued = collections.deque(
            (slug, task, now if now - since >= EXTEND_AFTER else since)
            for slug, task, since in self._queued
        )
        self.stats.extended += sum(self._per_flow(session.extend_tasks, late).values())

    def _release_queued(self) -> None:
        """Give back every prefetched task (stopping): other workers may run them at once."""
        waiting, self._queued = list(self._queued), collections.deque()
        for flow_slug, released in self._per_flow(session.release_tasks, waiting).items():
            self.stats.released += released
            logger.info("gave back %d prefetched task(s) of flow %s", released, flow_slug)

    def _per_flow(
        self,
        action: Callable[[psycopg.Connection[Any], str, uuid.UUID, list[session.TaskRef]], int],
        entries: Iterable[tuple[str, ClaimedTask, float]],
    ) -> dict[str, int]:
        """Call `action` (extend or release) once per flow for the given waiting tasks; how
        many tasks it took in each flow."""
        by_flow: dict[str, list[session.TaskRef]] = collections.defaultdict(list)
        for flow_slug, task, _ in entries:
            by_flow[flow_slug].append(_task_ref(task))

        def call(flow_slug: str, tasks: list[session.TaskRef]) -> int:
            assert self._conn is not None
            return action(self._conn, flow_slug, self.worker_ids[flow_slug], tasks)

        return {
            slug: self._db(functools.partial(call, slug, refs)) or 0
            for slug, refs in by_flow.items()
        }

    def _prefetch_limit(self) -> int:
        """How many tasks may wait for a slot: at most `prefetch`, and at most about
        `PREFETCH_HORIZON` seconds of work at the measured pace (before any measurement, no
        more than the executor's slots)."""
        assert self._executor is not None
        cap = self.options.prefetch
        if cap <= 0 or self._stopping.is_set():
            return 0
        slots = self._executor.concurrency
        if self._pace.seconds is None:
            return min(cap, slots)
        return min(cap, int(slots * PREFETCH_HORIZON / max(self._pace.seconds, 1e-6)))

    def _start(self, flow_slug: str, task: ClaimedTask) -> None:
        assert self._executor is not None
        key = (task.run_id, task.step_slug, task.task_index)
        step = self.flows[flow_slug].get_step(task.step_slug)
        job = Job(
            key=key,
            flow_slug=flow_slug,
            step_slug=task.step_slug,
            input=task.input,
            run_id=task.run_id,
            task_index=task.task_index,
            attempt=task.attempt,
            timeout=float(step.effective_timeout),
            flow_ref=self.flow_refs[flow_slug],
        )
        self._in_flight[key] = (flow_slug, task, time.monotonic())
        if self._task_hooks.started is not None:
            self._task_hooks.started(**self._task_fields(flow_slug, task))
        self._executor.submit(job, self._on_done)

    def _task_fields(self, flow_slug: str, task: ClaimedTask) -> dict[str, Any]:
        """The arguments every task hook takes."""
        return {
            "flow_slug": flow_slug,
            "run_id": task.run_id,
            "step_slug": task.step_slug,
            "task_index": task.task_index,
            "attempt": task.attempt,
            "worker_id": str(self.worker_ids[flow_slug]),
        }

    def _task_failed(
        self, flow_slug: str, task: ClaimedTask, outcome: Outcome, duration: float
    ) -> None:
        if self._task_hooks.failed is None:
            return
        step = self.flows[flow_slug].get_step(task.step_slug)
        self._task_hooks.failed(
            **self._task_fields(flow_slug, task),
            duration_seconds=duration,
            error=outcome.error,
            # what fail_task will decide: attempts left, unless the failure is final
            will_retry=outcome.retry != "never" and task.attempt < step.effective_max_attempts,
        )

    def _on_done(self, result: JobResult) -> None:
        # called from executor threads: hand over and wake the loop, nothing more
        self._results.append(result)
        self._wake.set()

    def _collect(self) -> bool:
        """Move finished jobs to the pending reports; True when there is something to report."""
        now = time.monotonic()
        if self._results and not self._pending:
            self._pending_since = now
        while self._results:
            result = self._results.popleft()
            key = result.key
            assert isinstance(key, tuple)
            run_id, step_slug, task_index = key
            flow_slug, task, started = self._in_flight.pop(key, (None, None, now))
            self._pace.add(now - started)
            outcome = Outcome(
                run_id, step_slug, task_index, task.attempt if task else None, flow_slug=flow_slug
            )
            if result.ok:
                # encoded as it is (Structs, dataclasses...) by the reporter, once
                outcome.output = result.output
            else:
                if result.traceback:
                    logger.warning(
                        "task %s/%s[%d] failed: %s: %s\n%s",
                        run_id,
                        step_slug,
                        task_index,
                        result.error_type,
                        result.error_message,
                        result.traceback,
                    )
                elif result.timed_out:
                    logger.warning(
                        "task %s/%s[%d] exceeded its timeout on the %s executor",
                        run_id,
                        step_slug,
                        task_index,
                        self.options.executor,
                    )
                # stored where every reader of runs sees it, like the traceback: no passwords
                outcome.error = error_text(
                    result.error_type,
                    redact_secrets(result.error_message) if result.error_message else None,
                )
                outcome.traceback = clean_traceback(result.traceback)
                if result.timed_out:
                    outcome.ended = "timed_out"
                if result.final:
                    outcome.retry = "never"
            self._pending.append(outcome)
            if task is not None and flow_slug is not None:
                if outcome.ok:
                    if self._task_hooks.finished is not None:
                        self._task_hooks.finished(
                            **self._task_fields(flow_slug, task), duration_seconds=now - started
                        )
                else:
                    self._task_failed(flow_slug, task, outcome, now - started)
        return bool(self._pending)

    def _report_due(self) -> bool:
        """Whether to report the pending results now, or let more gather first."""
        return (
            len(self._pending) >= REPORT_GATHER
            or len(self._in_flight) < REPORT_GATHER
            or time.monotonic() - self._pending_since >= REPORT_HOLD
            or self._stopping.is_set()
        )

    def _flush(self) -> None:
        assert self._reporter is not None
        batch, self._pending = self._pending, []
        offer = self._offer(batch)
        if offer is not None:
            self._reserved += offer.qty
        self._reporter.put(batch, offer)

    def _room(self, free: int, prefetch: int) -> int:
        """How many more tasks this worker may take: free slots and unused prefetch, less the
        tasks already waiting and the room set aside for claims that reports will bring back."""
        return max(0, free + prefetch - len(self._queued) - self._reserved)

    def _offer(self, batch: Sequence[Outcome]) -> ClaimOffer | None:
        """Room for the tasks this batch may make ready, when it is all of one flow."""
        assert self._executor is not None
        if self.options.per_task or self._stopping.is_set() or not batch:
            return None
        if len(batch) > OFFER_BATCH_LIMIT:
            return None
        flow_slug = batch[0].flow_slug
        if flow_slug is None or any(o.flow_slug != flow_slug for o in batch):
            return None
        # set aside no more than the batch can make ready, so that reports in flight at the same
        # time (runs side by side) each get room for their next hop
        cap = self.options.claim_size
        need = 0
        for outcome in batch:
            need += self._ready_bound(flow_slug, outcome.step_slug)
            if need >= cap:
                break
        room = self._room(self._executor.free_slots(), self._prefetch_limit())
        qty = min(room, cap, need)
        if qty <= 0 < need:
            return None
        # an offer of 0 (nothing downstream) still tells _on_flushed that nothing became ready
        return ClaimOffer(flow_slug, self.worker_ids[flow_slug], qty, covers_all=qty == need)

    def _ready_bound(self, flow_slug: str, step_slug: str) -> int:
        """At most how many tasks finishing one task of this step can make ready in its run:
        one per single step downstream (each starts once per run), any number past a map."""
        key = (flow_slug, step_slug)
        bound = self._ready_bounds.get(key)
        if bound is None:
            flow = self.flows[flow_slug]
            if step_slug not in flow:
                bound = self.options.claim_size  # a flow the database knows better than we do
            else:
                later = flow.descendants(step_slug)
                if any(step.is_map for step in later):
                    bound = self.options.claim_size
                else:
                    bound = len(later)
            self._ready_bounds[key] = bound
        return bound

    def _on_flushed(
        self,
        batch: Sequence[Outcome],
        offers: Sequence[ClaimOffer],
        rows: list[tuple[Any, ...]] | None,
    ) -> None:
        # called from the reporter thread
        for outcome in batch:
            if outcome.ok:
                self.stats.completed += 1
            else:
                self.stats.failed += 1
        self.stats.reports += 1
        if offers:
            self._handbacks.append((offers, rows))
        # Completions may have made tasks ready that nobody claimed yet, unless the report took
        # them all (it claimed fewer than offered, or all the batch could make ready) and no
        # failure was retried meanwhile
        took_all = rows is not None and (
            all(o.covers_all for o in offers)
            or sum(1 for row in rows if row[0] == "task") < sum(o.qty for o in offers)
        )
        if not took_all or any(not o.ok for o in batch):
            self._flushed.set()
        self._wake.set()

    def _take_handbacks(self) -> None:
        """Run the tasks that reports claimed, and release the slots their offers set aside."""
        while self._handbacks:
            offers, rows = self._handbacks.popleft()
            self._reserved -= sum(o.qty for o in offers)
            if not rows:
                continue
            flow_slug = offers[0].flow_slug
            tasks, run_inputs = rows_to_tasks(
                rows, self.flows[flow_slug], self.serializers.get(flow_slug)
            )
            if run_inputs:
                self._run_inputs.offer(run_inputs)
            for task in tasks:
                self._submit(flow_slug, task)
            self.stats.claimed += len(tasks)
            self.stats.claimed_on_report += len(tasks)

    # -- executor callbacks --------------------------------------------------------------------

    def _resolve_step(self, flow_slug: str, step_slug: str) -> Any:
        return self.flows[flow_slug].get_step(step_slug)

    def _load_flow_input(self, run_id: str) -> Any:
        return self._run_inputs.get(run_id)

    def _fetch_run_input(self, run_id: str) -> str:
        # executor threads call this; the loop's connection is not theirs to use
        with self._input_lock:
            if self._input_conn is None or self._input_conn.closed:
                self._input_conn = connect(self.dsn, autocommit=True)
            raw = session.run_input(self._input_conn, run_id)
        if raw is None:
            raise PgflowError(f"run {run_id} does not exist (was it pruned?)")
        return raw

    def _fetch_run_headers(self, run_id: str) -> Mapping[str, str]:
        # as _fetch_run_input: executor threads call this, on the worker's input connection
        with self._input_lock:
            if self._input_conn is None or self._input_conn.closed:
                self._input_conn = connect(self.dsn, autocommit=True)
            headers = session.run_headers(self._input_conn, run_id)
            self.stats.run_headers_fetched += 1
        if headers is None:
            raise PgflowError(f"run {run_id} does not exist (was it pruned?)")
        return headers

    # -- signals -------------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                logger.info(
                    "received %s: finishing in-flight tasks (again to exit at once)",
                    signal.Signals(signum).name,
                )
                self.stop()
            else:
                logger.warning(
                    "received %s again: exiting now; unfinished tasks will be retried",
                    signal.Signals(signum).name,
                )
                if self._executor is not None:
                    self._executor.kill()
                os._exit(130)

        for sig in previous:
            signal.signal(sig, handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore


def _serializers(flows: Mapping[str, Flow], default: str | None) -> dict[str, Serializer]:
    """Each flow's serializer when it is not the built-in default; `PluginError` (naming the
    flow) when one is not installed."""
    chosen: dict[str, Serializer] = {}
    for slug, flow in flows.items():
        name = flow.serializer or default or DEFAULT_SERIALIZER
        if name == DEFAULT_SERIALIZER:
            continue  # the hot path's own msgspec encoding and decoding
        try:
            chosen[slug] = get_serializer(name)
        except PluginError as exc:
            raise PluginError(f"cannot serve flow {slug!r}: {exc}") from None
    return chosen


def _task_ref(task: ClaimedTask) -> session.TaskRef:
    return (task.run_id, task.step_slug, task.task_index, task.attempt)


def _import_path(flow: Flow) -> str | None:
    """'module:attr' for a flow defined at module level of an importable module."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is flow:
                return f"{name}:{attr}"
    return None


def run_worker(flows: Sequence[Flow | str], **options: Any) -> Worker:
    """Build and run a worker in the current thread (returns after it stopped)."""
    worker = Worker(flows, **options)
    worker.run()
    return worker
