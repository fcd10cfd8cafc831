"""The inline executor: `submit()` runs the handler right away, in the caller's thread.

Meant for tests and debugging: breakpoints, profilers and tracebacks see the handler as part of
the worker's own call stack, and results are reported before `submit()` returns. One job runs at
a time, whatever `concurrency` says.

Timeouts cannot be enforced: nothing can interrupt the caller's thread. A handler that returns
after its deadline has its result discarded and the attempt fails with `TimeoutError`, as with
the other executors, but only once the handler has returned.
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar

from pgflow.executors.base import (
    Executor,
    ExecutorBusyError,
    ExecutorClosedError,
    ExecutorError,
    Job,
    JobResult,
    OnDone,
    deliver,
    logger,
    make_context,
    run_job,
)


class InlineExecutor(Executor):
    """Runs each handler inside `submit()`."""

    name: ClassVar[str] = "inline"

    def _setup(self) -> None:
        self.concurrency = 1  # whatever was asked: jobs run one at a time, inside submit()
        self._shutdown_signal = threading.Event()
        self._started = False
        self._closed = False
        self._running = False

    def start(self) -> None:
        if self._started or self._closed:
            raise ExecutorError("the inline executor can be started only once")
        self._started = True

    def submit(self, job: Job, on_done: OnDone) -> None:
        if not self._started or self._closed:
            raise ExecutorClosedError(
                "the inline executor is not running (not started yet, or shut down)"
            )
        if self._running:
            raise ExecutorBusyError(
                "the inline executor runs one job at a time and one is running (submit() was "
                "called from inside a handler or from another thread)"
            )
        self._running = True
        try:
            started = time.monotonic()
            ctx = make_context(
                job,
                self._shutdown_signal,
                self.load_flow_input,
                load_run_headers=self.load_run_headers,
            )
            result = run_job(job, lambda: self.resolve_step(job.flow_slug, job.step_slug), ctx)
            if job.timeout is not None and time.monotonic() - started > job.timeout:
                logger.warning(
                    "%s.%s task %d of run %s returned after its timeout of %gs (the inline "
                    "executor cannot interrupt handlers): the attempt is failed and its "
                    "result discarded",
                    job.flow_slug,
                    job.step_slug,
                    job.task_index,
                    job.run_id,
                    job.timeout,
                )
                result = JobResult.timeout(job.key, job.timeout)
        finally:
            self._running = False
        deliver(on_done, result)

    def free_slots(self) -> int:
        return 0 if self._running or self._closed or not self._started else 1

    def shutdown(self, grace: float) -> list[Job]:
        # A job can only be in flight here if another thread is inside submit(); it is left to
        # finish and report, since nothing can stop it.
        self._closed = True
        self._shutdown_signal.set()
        return []

    def kill(self) -> None:
        self.shutdown(grace=0)
