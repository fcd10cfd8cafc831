"""The hooks a real worker fires, seen by a plugin registered in the test process: once per
worker process for its start and stop, with every flow it serves."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import worker_flows
from worker_helpers import Mode, running_worker

from pgflow import plugins
from pgflow.client import Client
from pgflow.flow import Flow
from pgflow.hooks import hookimpl

THREAD = Mode("thread")


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
    with running_worker(flows, db_dsn, THREAD) as running:
        expected = {slug: str(worker_id) for slug, worker_id in running.worker.worker_ids.items()}
        assert recorder.of("started") == [
            {"workers": expected, "flows": ["wt_chain", "wt_diamond"]}
        ]
        assert recorder.of("stopped") == []
    assert recorder.of("stopped") == [{"workers": expected}]
    with Client(db_dsn) as client:
        registered = {worker.flow_slug: worker.worker_id for worker in client.workers()}
    assert registered == expected  # the ids the hooks named are those the database knows
