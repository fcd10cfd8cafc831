"""The default executor: each handler runs in a thread of this process.

Good for handlers that wait on I/O (HTTP calls, databases) and for libraries that release the GIL.
A watchdog thread enforces timeouts: at the deadline the attempt fails with `TimeoutError` and
the slot frees, but the handler's thread cannot be stopped, so it runs on in the background and
its late result is discarded (see `_threads.ElasticThreadPool`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import ClassVar

from pgflow.executors._threads import ElasticThreadPool
from pgflow.executors.base import (
    ExecutorError,
    InFlightExecutor,
    Job,
    JobResult,
    OnDone,
    deliver,
    logger,
    make_context,
    run_job,
)


class _InFlight:
    __slots__ = ("deadline", "job", "on_done")

    def __init__(self, job: Job, on_done: OnDone, deadline: float | None) -> None:
        self.job = job
        self.on_done = on_done
        self.deadline = deadline


class ThreadExecutor(InFlightExecutor):
    """Runs up to `concurrency` handlers at once, each in its own thread."""

    name: ClassVar[str] = "thread"

    def _setup(self) -> None:
        self._lock = threading.Lock()
        # Notified when a job leaves `_in_flight` (shutdown waits on it).
        self._job_left = threading.Condition(self._lock)
        # Notified when the watchdog must look at deadlines sooner than it planned, or stop.
        self._watchdog_wake = threading.Condition(self._lock)
        self._in_flight: dict[int, _InFlight] = {}
        self._ids = itertools.count()
        self._shutdown_signal = threading.Event()
        self._pool: ElasticThreadPool | None = None
        self._watchdog: threading.Thread | None = None
        self._accepting = False
        self._closed = False
        # When the sleeping watchdog will next look; -inf while it is awake (it will look anyway).
        self._next_check = -math.inf

    def start(self) -> None:
        with self._lock:
            if self._pool is not None or self._closed:
                raise ExecutorError("the thread executor can be started only once")
            self._pool = ElasticThreadPool("pgflow-thread", max_idle=self.concurrency)
            self._accepting = True
        self._watchdog = threading.Thread(
            target=self._watch, name="pgflow-thread-watchdog", daemon=True
        )
        self._watchdog.start()

    def submit(self, job: Job, on_done: OnDone) -> None:
        deadline = None if job.timeout is None else time.monotonic() + job.timeout
        with self._lock:
            self._check_can_submit(running=self._pool is not None)
            assert self._pool is not None
            job_id = next(self._ids)
            self._in_flight[job_id] = _InFlight(job, on_done, deadline)
            if deadline is not None and deadline < self._next_check:
                self._watchdog_wake.notify()
            # Inside the lock, so shutdown cannot close the pool between the checks and here.
            self._pool.run_soon(self._run, job_id, job)

    def _run(self, job_id: int, job: Job) -> None:
        ctx = make_context(
            job,
            self._shutdown_signal,
            self.load_flow_input,
            load_run_headers=self.load_run_headers,
        )
        result = run_job(job, lambda: self.resolve_step(job.flow_slug, job.step_slug), ctx)
        with self._lock:
            entry = self._in_flight.pop(job_id, None)
            if entry is not None:
                self._job_left.notify_all()
        if entry is None:
            logger.debug(
                "discarding the late result of %s.%s task %d of run %s (its attempt already "
                "timed out or was given back at shutdown)",
                job.flow_slug,
                job.step_slug,
                job.task_index,
                job.run_id,
            )
            return
        deliver(entry.on_done, result)

    def _watch(self) -> None:
        while True:
            expired: list[_InFlight] = []
            with self._lock:
                while not expired:
                    if self._closed:
                        return
                    now = time.monotonic()
                    soonest = math.inf
                    for job_id, entry in list(self._in_flight.items()):
                        if entry.deadline is None:
                            continue
                        if entry.deadline <= now:
                            expired.append(self._in_flight.pop(job_id))
                        else:
                            soonest = min(soonest, entry.deadline)
                    if expired:
                        self._job_left.notify_all()
                        self._next_check = -math.inf
                    else:
                        self._next_check = soonest
                        self._watchdog_wake.wait(None if soonest == math.inf else soonest - now)
            for entry in expired:
                self._time_out(entry)

    def _time_out(self, entry: _InFlight) -> None:
        job = entry.job
        assert job.timeout is not None  # only jobs with a deadline expire
        logger.warning(
            "%s.%s task %d of run %s exceeded its timeout of %gs: the attempt is failed, but "
            "its thread cannot be stopped and keeps running until the handler returns; its "
            "result will be discarded",
            job.flow_slug,
            job.step_slug,
            job.task_index,
            job.run_id,
            job.timeout,
        )
        deliver(entry.on_done, JobResult.timeout(job.key, job.timeout))

    def shutdown(self, grace: float) -> list[Job]:
        unfinished = self._stop_accepting_and_wait(grace, lambda entry: entry.job)
        if unfinished is None:
            return []
        with self._lock:
            self._watchdog_wake.notify()
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False)
        if self._watchdog is not None:
            self._watchdog.join()
        if unfinished:
            logger.warning(
                "the thread executor stopped with %d handler(s) still running after %gs of "
                "grace; their threads keep running and their results will be discarded",
                len(unfinished),
                grace,
            )
        return unfinished

    def kill(self) -> None:
        # Threads cannot be killed; abandoning their jobs at once is all that can be done.
        self.shutdown(grace=0)
