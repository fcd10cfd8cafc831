"""The asyncio executor: `async def` handlers share one event loop in a dedicated thread.

Suited to many concurrent I/O-bound handlers written with asyncio (thousands of slots cost no
threads). Each async handler runs as a task of its own, with a timer for its timeout: past it,
the attempt fails at once and the handler is cancelled. Submissions reach the loop in bursts
(one wake-up of the loop per burst, not per job). Sync handlers are run off the loop in threads,
as `asyncio.to_thread` would, but in an `ElasticThreadPool`: a timed-out sync handler cannot be
stopped, and it must not take a thread away from the jobs that follow.

Handlers must not block the loop: a sync call inside an `async def` handler stalls every other
handler of this executor.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import threading
from typing import Any, ClassVar

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
)

# How long, at shutdown, the loop waits for abandoned handlers to react to cancellation.
_CANCEL_WAIT = 1.0


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # Read the outcome of an abandoned handler so asyncio does not log "exception was never
    # retrieved" for a failure nobody is waiting for any more.
    if not future.cancelled():
        future.exception()


class AsyncioExecutor(InFlightExecutor):
    """Runs up to `concurrency` handlers at once on one event loop."""

    name: ClassVar[str] = "asyncio"

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._job_left = threading.Condition(self._lock)
        self._in_flight: dict[int, tuple[Job, OnDone]] = {}
        # submitted, not yet begun on the loop (guarded by the lock)
        self._submitted: collections.deque[tuple[int, Job]] = collections.deque()
        self._ids = itertools.count()
        self._shutdown_signal = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._sync_threads = ElasticThreadPool("pgflow-asyncio-sync", max_idle=self.concurrency)
        self._accepting = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._loop is not None or self._closed:
                raise ExecutorError("the asyncio executor can be started only once")
            self._loop = asyncio.new_event_loop()
        running = threading.Event()
        self._loop_thread = threading.Thread(
            target=self._run_loop, args=(self._loop, running), name="pgflow-asyncio", daemon=True
        )
        self._loop_thread.start()
        running.wait()
        with self._lock:
            self._accepting = True

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, running: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(running.set)
        try:
            loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                # Bounded: a handler that swallows cancellation must not hang the shutdown.
                loop.run_until_complete(asyncio.wait(leftovers, timeout=_CANCEL_WAIT))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, job: Job, on_done: OnDone) -> None:
        with self._lock:
            self._check_can_submit(running=self._loop is not None)
            assert self._loop is not None
            job_id = next(self._ids)
            self._in_flight[job_id] = (job, on_done)
            self._submitted.append((job_id, job))
            if len(self._submitted) == 1:
                self._loop.call_soon_threadsafe(self._begin_submitted)

    def _begin_submitted(self) -> None:
        """On the loop: start every job submitted since the last call."""
        with self._lock:
            jobs = list(self._submitted)
            self._submitted.clear()
        for job_id, job in jobs:
            self._begin(job_id, job)

    def _begin(self, job_id: int, job: Job) -> None:
        assert self._loop is not None
        try:
            step = self.resolve_step(job.flow_slug, job.step_slug)
        except Exception as exc:
            self._finish(job_id, JobResult.from_exception(job.key, exc))
            return
        if step.is_async:
            self._loop.create_task(self._execute_async(job_id, job, step))
        else:
            self._loop.create_task(self._execute(job_id, job))

    def _finish(self, job_id: int, result: JobResult) -> None:
        with self._lock:
            entry = self._in_flight.pop(job_id, None)
            if entry is not None:
                self._job_left.notify_all()
        if entry is not None:
            deliver(entry[1], result)

    async def _execute_async(self, job_id: int, job: Job, step: Any) -> None:
        """An async handler in this task; a timer fails the attempt and cancels it at its
        timeout."""
        assert self._loop is not None
        task = asyncio.current_task()
        assert task is not None
        timer: asyncio.TimerHandle | None = None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            assert job.timeout is not None
            logger.warning(
                "%s.%s task %d of run %s exceeded its timeout of %gs: the attempt is failed and "
                "the handler was cancelled",
                job.flow_slug,
                job.step_slug,
                job.task_index,
                job.run_id,
                job.timeout,
            )
            # failed at once, even if the handler takes its time to react to the cancellation
            self._finish(job_id, JobResult.timeout(job.key, job.timeout))
            task.cancel()

        if job.timeout is not None:
            timer = self._loop.call_later(job.timeout, expire)
        ctx = make_context(
            job,
            self._shutdown_signal,
            self.load_flow_input,
            load_run_headers=self.load_run_headers,
        )
        try:
            output = await step.invoke_async(job.input, ctx)
        except asyncio.CancelledError:
            if expired:
                return
            # the handler cancelled itself, or the executor is stopping (then nobody waits)
            result = JobResult.failure(
                job.key, "CancelledError", "the handler was cancelled before it finished"
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            result = JobResult.from_exception(job.key, exc)
        else:
            result = JobResult.success(job.key, output)
        finally:
            if timer is not None:
                timer.cancel()
        self._finish(job_id, result)

    async def _execute(self, job_id: int, job: Job) -> None:
        self._finish(job_id, await self._attempt(job))

    async def _attempt(self, job: Job) -> JobResult:
        loop = asyncio.get_running_loop()
        ctx = make_context(
            job,
            self._shutdown_signal,
            self.load_flow_input,
            load_run_headers=self.load_run_headers,
        )
        try:
            step = self.resolve_step(job.flow_slug, job.step_slug)
            running: asyncio.Future[Any]
            if step.is_async:
                running = asyncio.ensure_future(step.invoke_async(job.input, ctx))
            else:
                copied = contextvars.copy_context()
                running = loop.run_in_executor(
                    self._sync_threads,
                    copied.run,
                    step.invoke,
                    job.input,
                    ctx,
                )
        except Exception as exc:
            return JobResult.from_exception(job.key, exc)
        try:
            done, _ = await asyncio.wait({running}, timeout=job.timeout)
        except asyncio.CancelledError:
            # The executor is being stopped: the handler goes with it.
            running.cancel()
            raise
        if not done:
            assert job.timeout is not None  # asyncio.wait only gives up when given a timeout
            running.cancel()
            running.add_done_callback(_consume_outcome)
            logger.warning(
                "%s.%s task %d of run %s exceeded its timeout of %gs: the attempt is failed and %s",
                job.flow_slug,
                job.step_slug,
                job.task_index,
                job.run_id,
                job.timeout,
                "the handler was cancelled"
                if step.is_async
                else "its result will be discarded; its thread cannot be stopped and keeps "
                "running until the handler returns",
            )
            return JobResult.timeout(job.key, job.timeout)
        if running.cancelled():
            return JobResult.failure(
                job.key, "CancelledError", "the handler was cancelled before it finished"
            )
        error = running.exception()
        if error is not None:
            return JobResult.from_exception(job.key, error)
        return JobResult.success(job.key, running.result())

    def shutdown(self, grace: float) -> list[Job]:
        unfinished = self._stop_accepting_and_wait(grace, lambda entry: entry[0])
        if unfinished is None:
            return []
        self._stop_loop()
        if unfinished:
            logger.warning(
                "the asyncio executor stopped with %d handler(s) still running after %gs of "
                "grace; they were cancelled (sync handlers' threads run on, results discarded)",
                len(unfinished),
                grace,
            )
        return unfinished

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._sync_threads.shutdown(wait=False)

    def kill(self) -> None:
        self.shutdown(grace=0)
