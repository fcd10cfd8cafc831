"""The hooks a real worker fires, seen by a plugin registered in the test process: once per
worker process for its start and stop, with every flow it serves; and each task's claim, start,
finish or failure (with whether it will be retried)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import worker_flows
from worker_helpers import POLL_INTERVAL, RunningWorker

from pgflow import Fail, plugins
from pgflow.client import Client
from pgflow.context import Context
from pgflow.flow import Flow
from pgflow.hooks import hookimpl
from pgflow.worker import Worker


@contextlib.contextmanager
def running_worker(flows: Sequence[Flow], dsn: str) -> Iterator[RunningWorker]:
    """A thread-executor worker in a thread (flows need no import path for it)."""
    running = RunningWorker(
        Worker(
            flows,
            dsn=dsn,
            concurrency=2,
            poll_interval=POLL_INTERVAL,
            install_signal_handlers=False,
        )
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


# fails its first attempt, succeeds on the second
flaky_flow = Flow("ph_flaky", max_attempts=2, base_delay=0)


@flaky_flow.step()
def wobble(value: Any, ctx: Context) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


# refuses for good although attempts are left
refuse_flow = Flow("ph_refuse", max_attempts=3, base_delay=0)


@refuse_flow.step()
def decline(value: Any) -> int:
    raise Fail("not payable")


# fails its only attempt
once_flow = Flow("ph_once", max_attempts=1)


@once_flow.step()
def boom(value: Any) -> int:
    raise RuntimeError("no luck")


class Recorder:
    """Records every hook call, in order, from whichever thread makes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def add(self, hook: str, **kwargs: Any) -> None:
        with self.lock:
            self.calls.append((hook, kwargs))

    def of(self, hook: str) -> list[dict[str, Any]]:
        with self.lock:
            return [kwargs for name, kwargs in self.calls if name == hook]

    @hookimpl
    def pgflow_worker_started(self, workers: Mapping[str, str], flows: Sequence[Flow]) -> None:
        self.add("started", workers=dict(workers), flows=[flow.slug for flow in flows])

    @hookimpl
    def pgflow_worker_stopped(self, workers: Mapping[str, str]) -> None:
        self.add("stopped", workers=dict(workers))

    @hookimpl
    def pgflow_task_claimed(
        self,
        flow_slug: str,
        run_id: str,
        step_slug: str,
        task_index: int,
        attempt: int,
        worker_id: str,
    ) -> None:
        self.add("claimed", run_id=run_id, step=step_slug, attempt=attempt, worker_id=worker_id)

    @hookimpl
    def pgflow_task_started(self, run_id: str, step_slug: str, attempt: int) -> None:
        self.add("started_task", run_id=run_id, step=step_slug, attempt=attempt)

    @hookimpl
    def pgflow_task_finished(
        self, run_id: str, step_slug: str, attempt: int, duration_seconds: float
    ) -> None:
        assert duration_seconds >= 0
        self.add("finished", run_id=run_id, step=step_slug, attempt=attempt)

    @hookimpl
    def pgflow_task_failed(
        self, run_id: str, step_slug: str, attempt: int, error: str, will_retry: bool
    ) -> None:
        self.add(
            "failed",
            run_id=run_id,
            step=step_slug,
            attempt=attempt,
            error=error,
            will_retry=will_retry,
        )

    def of_run(self, run_id: str) -> list[tuple[str, str, int]]:
        """(hook, step, attempt) of the task hooks called for one run, in order."""
        with self.lock:
            return [
                (name, kwargs["step"], kwargs["attempt"])
                for name, kwargs in self.calls
                if kwargs.get("run_id") == run_id
            ]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    plugins.reset_plugin_manager()
    found = Recorder()
    plugins.get_plugin_manager().register(found, name="recorder")
    yield found
    plugins.reset_plugin_manager()


def test_worker_started_and_stopped_fire_once_per_process_with_every_flow(
    db_dsn: str, recorder: Recorder
) -> None:
    flows = [worker_flows.chain, worker_flows.diamond]
    with running_worker(flows, db_dsn) as running:
        expected = {slug: str(worker_id) for slug, worker_id in running.worker.worker_ids.items()}
        assert recorder.of("started") == [
            {"workers": expected, "flows": ["wt_chain", "wt_diamond"]}
        ]
        assert recorder.of("stopped") == []
    assert recorder.of("stopped") == [{"workers": expected}]
    with Client(db_dsn) as client:
        registered = {worker.flow_slug: worker.worker_id for worker in client.workers()}
    assert registered == expected  # the ids the hooks named are those the database knows


def test_task_hooks_follow_each_task_of_a_run(db_dsn: str, recorder: Recorder) -> None:
    with running_worker([worker_flows.chain], db_dsn) as running, Client(db_dsn) as client:
        run = running.run_flow(client, worker_flows.chain, {"word": "x"})
        worker_id = str(running.worker.worker_ids["wt_chain"])
    assert run.status == "completed"
    assert recorder.of_run(run.run_id) == [
        (hook, step, 1)
        for step in ("first", "second", "third")
        for hook in ("claimed", "started_task", "finished")
    ]
    assert {call["worker_id"] for call in recorder.of("claimed")} == {worker_id}


def test_task_failed_says_whether_the_task_will_be_retried(db_dsn: str, recorder: Recorder) -> None:
    flows = [flaky_flow, refuse_flow, once_flow]
    with running_worker(flows, db_dsn) as running, Client(db_dsn) as client:
        flaky = running.run_flow(client, flaky_flow, {})
        refused = running.run_flow(client, refuse_flow, {})
        once = running.run_flow(client, once_flow, {})
    assert (flaky.status, refused.status, once.status) == ("completed", "failed", "failed")
    assert recorder.of_run(flaky.run_id) == [
        ("claimed", "wobble", 1),
        ("started_task", "wobble", 1),
        ("failed", "wobble", 1),
        ("claimed", "wobble", 2),
        ("started_task", "wobble", 2),
        ("finished", "wobble", 2),
    ]
    failures = {
        (call["run_id"], call["attempt"]): (call["error"], call["will_retry"])
        for call in recorder.of("failed")
    }
    assert failures == {
        (flaky.run_id, 1): ("RuntimeError: first attempt fails", True),
        # pgflow.Fail: final although two attempts are left
        (refused.run_id, 1): ("Fail: not payable", False),
        (once.run_id, 1): ("RuntimeError: no luck", False),
    }


def test_a_worker_with_no_task_hook_implemented_calls_none(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # installed plugins (pgflow-prometheus in CI) implement task hooks: keep them out
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()
    try:
        with running_worker([worker_flows.chain], db_dsn) as running:
            hooks = running.worker._task_hooks
        assert (hooks.claimed, hooks.started, hooks.finished, hooks.failed) == (None,) * 4
    finally:
        plugins.reset_plugin_manager()
