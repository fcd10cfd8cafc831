"""Running a real `Worker` in a thread for the scenario tests, and reading back what it did.

`running_worker(flows, dsn, mode)` starts a worker on one executor and path (batched or
per-task), waits until it claims, and on exit stops it, joins its thread and re-raises anything
its `run()` raised. `RunningWorker.finish(client, run_id)` waits for the run with `Client.wait`
in short slices, so a worker that died fails the test at once instead of after the whole wait.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import attempt_flows
import bad_input_flows
import pytest
import retry_flows
import worker_flows

from pgflow.client import Client, Run, RunFailed, StepState, TaskState, WaitTimeout
from pgflow.flow import Flow
from pgflow.worker import Worker

EXECUTORS = ("thread", "process", "asyncio", "inline")

# Small, so the 2-core test machine is not swamped; the inline executor runs one job at a time.
CONCURRENCY = {"thread": 2, "process": 2, "asyncio": 4, "inline": 1}

RUN_TIMEOUT = 60.0  # a run that takes longer than this is stuck
START_TIMEOUT = 60.0  # process children start slowly on a busy machine
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.2  # NOTIFY wakes workers anyway; this bounds a lost wake-up


@dataclass(frozen=True)
class Mode:
    """Which executor the worker uses, and whether it claims and reports per task."""

    executor: str
    per_task: bool = False

    @property
    def id(self) -> str:
        return f"{self.executor}-{'per_task' if self.per_task else 'batched'}"


BATCHED = tuple(Mode(name) for name in EXECUTORS)
PER_TASK = tuple(Mode(name, per_task=True) for name in EXECUTORS)
ALL_MODES = BATCHED + PER_TASK


def modes(*selected: Mode) -> pytest.MarkDecorator:
    """`@modes(*ALL_MODES)`: parametrize a test's `mode` argument, with readable ids."""
    return pytest.mark.parametrize("mode", selected, ids=[m.id for m in selected])


# the modules of module-level flows that child processes can import
FLOW_MODULES = (worker_flows, retry_flows, bad_input_flows, attempt_flows)


def flow_ref(flow: Flow) -> str:
    """The "module:attribute" of a flow in one of `FLOW_MODULES`, which child processes import."""
    for module in FLOW_MODULES:
        for name, value in vars(module).items():
            if value is flow:
                return f"{module.__name__}:{name}"
    raise AssertionError(f"flow {flow.slug!r} is not defined at module level in {FLOW_MODULES}")


class RunningWorker:
    """A worker running in a thread of the test process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        # Wakes as soon as the worker is claiming, or has died trying to start.
        while not self.worker.started.wait(0.05):
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start within {START_TIMEOUT:g}s")

    def check_alive(self) -> None:
        if not self.thread.is_alive():
            raise AssertionError(f"the worker stopped unexpectedly: {self.error!r}") from self.error

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self.worker.stop()
        stopped = self.worker.wait_stopped(timeout)
        self.thread.join(timeout)
        assert stopped and not self.thread.is_alive(), (
            f"the worker did not stop within {timeout:g}s"
        )
        if self.error is not None:
            raise AssertionError(f"the worker failed: {self.error!r}") from self.error

    def finish(self, client: Client, run_id: str, timeout: float = RUN_TIMEOUT) -> Run:
        """Wait until the run is finished, whatever its status, and return it with its tasks."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"run {run_id} did not finish within {timeout:g}s: "
                    f"{describe_run(client.get(run_id))}"
                )
            try:
                client.wait(run_id, timeout=min(1.0, left))
            except WaitTimeout:
                continue
            except RunFailed:  # also RunCancelled
                pass
            return client.get(run_id)

    def run_flow(self, client: Client, flow: Flow, input: Any) -> Run:
        return self.finish(client, client.start(flow, input))


def start_worker(flows: Sequence[Flow], dsn: str, mode: Mode, **options: Any) -> RunningWorker:
    """Start a worker serving `flows` (by import path) and wait until it claims tasks.

    `options` override the test defaults (any `Worker` keyword argument).
    """
    settings: dict[str, Any] = {
        "dsn": dsn,
        "executor": mode.executor,
        "per_task": mode.per_task,
        "concurrency": CONCURRENCY[mode.executor],
        "poll_interval": POLL_INTERVAL,
        "shutdown_grace": 5.0,
        "install_signal_handlers": False,
        **options,
    }
    running = RunningWorker(Worker([flow_ref(flow) for flow in flows], **settings))
    running.start()
    return running


@contextlib.contextmanager
def running_worker(
    flows: Sequence[Flow], dsn: str, mode: Mode, **options: Any
) -> Iterator[RunningWorker]:
    """Run a worker (see `start_worker`) for the duration of the block, then stop it."""
    running = start_worker(flows, dsn, mode, **options)
    try:
        yield running
    except BaseException:
        # The test's own failure matters more than a failure to stop.
        with contextlib.suppress(AssertionError):
            running.stop()
        raise
    running.stop()


# -- reading a finished run ----------------------------------------------------------------------


def step_of(run: Run, slug: str) -> StepState:
    for step in run.steps:
        if step.step_slug == slug:
            return step
    raise AssertionError(
        f"run {run.run_id} has no step {slug!r}: {[s.step_slug for s in run.steps]}"
    )


def task_of(run: Run, slug: str, index: int = 0) -> TaskState:
    for task in step_of(run, slug).tasks:
        if task.task_index == index:
            return task
    raise AssertionError(f"step {slug!r} of run {run.run_id} has no task {index}")


def statuses(run: Run) -> dict[str, str]:
    """{step slug: status}, with the skip reason for skipped steps: "skipped:condition_unmet"."""
    return {
        step.step_slug: f"{step.status}:{step.skip_reason}" if step.skip_reason else step.status
        for step in run.steps
    }


def describe_run(run: Run) -> str:
    steps = ", ".join(
        f"{s.step_slug}={s.status}"
        + (f" ({s.error_message})" if s.error_message else "")
        + "".join(f" [task {t.task_index} {t.status} x{t.attempts_count}]" for t in s.tasks)
        for s in run.steps
    )
    return f"status {run.status}, error {run.error_message!r}, steps: {steps}"


def completed_output(run: Run) -> Any:
    assert run.status == "completed", describe_run(run)
    return run.output


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
