"""pgflow-otel with a real worker (in a thread of the test process) and the SDK's in-memory
exporter: a run started inside a span gets a run span under it, a span per step under the run
span and a span per task attempt under its step's span, all in the starter's trace; a failed
attempt's span says so and whether it is retried; a run started outside any span is a trace of
its own; and without a TracerProvider the plugin does nothing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once
from worker_helpers import POLL_INTERVAL, RunningWorker, wait_until

import pgflow_otel
from pgflow import Client, plugins
from pgflow.context import Context
from pgflow.db.events import set_events
from pgflow.flow import Flow
from pgflow.worker import Worker
from pgflow_otel import InertPlugin, TracingPluginWithEvents, run_span_id, step_span_id

# split -> double (a map over split's list) -> total, whose first attempt fails
traced = Flow("ot_traced", max_attempts=2, base_delay=0)


@traced.step()
def split(value: Any) -> list[int]:
    return [1, 2, 3]


@traced.map(array="split")
def double(item: int) -> int:
    return item * 2


@traced.step(depends_on=["double"])
def total(value: Any, ctx: Context) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("flaky")
    return sum(value["double"])


def _reset_tracer_provider() -> None:
    # The API lets a process set its TracerProvider once; tests set one each, and must leave
    # none behind for the other tests (OpenTelemetry's own test helpers do the same).
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]


@contextlib.contextmanager
def plugin_alone() -> Iterator[pgflow_otel.TracingPlugin | pgflow_otel.InertPlugin]:
    """The plugin as its entry point makes it (now), registered alone (installed distributions
    kept out, pgflow-otel's own entry point too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugins.manager, "_entry_points", lambda: ())
        plugins.reset_plugin_manager()
        plugin = pgflow_otel.plugin
        plugins.get_plugin_manager().register(plugin, name="otel")
        try:
            yield plugin
        finally:
            plugins.reset_plugin_manager()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    _reset_tracer_provider()
    trace.set_tracer_provider(provider)
    try:
        yield found
    finally:
        provider.shutdown()
        _reset_tracer_provider()


@contextlib.contextmanager
def running_worker(flows: Sequence[Flow], dsn: str) -> Iterator[RunningWorker]:
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


def named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_run_is_traced_under_the_span_that_started_it(
    db_dsn: str, exporter: InMemorySpanExporter
) -> None:
    set_events(db_dsn, True)  # run and step spans come from the events
    tracer = trace.get_tracer("test")
    with (
        plugin_alone() as plugin,
        running_worker([traced], db_dsn) as running,
        Client(db_dsn) as client,
    ):
        assert isinstance(plugin, TracingPluginWithEvents)
        with tracer.start_as_current_span("starter") as starter:
            run_id = client.start(traced, {})
        untraced_id = client.start(traced, {})  # outside any span
        for started in (run_id, untraced_id):
            assert running.finish(client, started).status == "completed"
        wait_until(
            lambda: len(named(exporter.get_finished_spans(), "pgflow run")) == 2,
            "both run spans",
        )
    spans = exporter.get_finished_spans()
    context = starter.get_span_context()

    def of_run(prefix: str, run: str) -> list[ReadableSpan]:
        return [s for s in named(spans, prefix) if s.attributes["pgflow.run_id"] == run]

    (run_span,) = of_run("pgflow run", run_id)
    assert run_span.name == "pgflow run ot_traced"
    assert run_span.context.span_id == run_span_id(run_id)
    assert parent_id(run_span) == context.span_id
    assert run_span.status.status_code == StatusCode.UNSET
    assert run_span.attributes["pgflow.status"] == "completed"

    steps = {s.attributes["pgflow.step_slug"]: s for s in of_run("pgflow step", run_id)}
    assert sorted(steps) == ["double", "split", "total"]
    assert len(of_run("pgflow step", run_id)) == 3
    for slug, span in steps.items():
        assert span.context.span_id == step_span_id(run_id, slug)
        assert parent_id(span) == run_span.context.span_id
        assert run_span.start_time <= span.start_time <= span.end_time <= run_span.end_time

    tasks = sorted(
        (
            s.attributes["pgflow.step_slug"],
            s.attributes["pgflow.task_index"],
            s.attributes["pgflow.attempt"],
        )
        for s in of_run("pgflow task", run_id)
    )
    assert tasks == [
        ("double", 0, 1),
        ("double", 1, 1),
        ("double", 2, 1),
        ("split", 0, 1),
        ("total", 0, 1),
        ("total", 0, 2),
    ]
    for span in of_run("pgflow task", run_id):
        assert parent_id(span) == steps[span.attributes["pgflow.step_slug"]].context.span_id
        assert span.attributes["pgflow.worker_id"] == str(running.worker.worker_ids["ot_traced"])
    failed = [s for s in of_run("pgflow task", run_id) if s.attributes["pgflow.attempt"] == 1]
    failed = [s for s in failed if s.attributes["pgflow.step_slug"] == "total"]
    (failed_span,) = failed
    assert failed_span.status.status_code == StatusCode.ERROR
    assert failed_span.status.description == "RuntimeError: flaky"
    assert failed_span.attributes["pgflow.will_retry"] is True
    assert failed_span.attributes["error.type"] == "RuntimeError"
    retried = [s for s in of_run("pgflow task", run_id) if s.attributes["pgflow.attempt"] == 2]
    assert [s.status.status_code for s in retried] == [StatusCode.UNSET]

    # every span of the run is in the starter's trace
    ours = of_run("pgflow", run_id)
    assert len(ours) == 1 + 3 + 6
    assert {s.context.trace_id for s in ours} == {context.trace_id}

    # a run started outside any span is a trace of its own, whose id is the run id
    untraced = of_run("pgflow", untraced_id)
    assert len(untraced) == 1 + 3 + 6
    assert {s.context.trace_id for s in untraced} == {uuid.UUID(untraced_id).int}
    (untraced_run,) = of_run("pgflow run", untraced_id)
    assert untraced_run.parent is None


def test_without_a_tracer_provider_nothing_is_traced_and_the_run_completes(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_events(db_dsn, True)
    _reset_tracer_provider()
    queued: list[object] = []
    monkeypatch.setattr(pgflow_otel.writer, "put", queued.append)
    with (
        plugin_alone() as plugin,
        running_worker([traced], db_dsn) as running,
        Client(db_dsn) as client,
    ):
        # no hook at all: no event sink (workers relay no events for it), no task hook to call
        assert type(plugin) is InertPlugin
        assert not plugins.has_event_sinks()
        hooks = plugins.task_hooks()
        assert (hooks.claimed, hooks.started, hooks.finished, hooks.failed) == (None,) * 4
        with trace.get_tracer("test").start_as_current_span("starter"):
            run_id = client.start(traced, {})
        assert running.finish(client, run_id).status == "completed"
        with client._lock:
            assert client._conn is not None
            kept = client._conn.execute("select count(*) as n from pgflow.run_headers").fetchone()
    assert kept == {"n": 0}  # nothing to carry: no statement of more at the start
    assert queued == []  # the task hooks returned at once


def test_span_ids_are_derived_from_the_run_and_step() -> None:
    run = "0af76519-16cd-43dd-8448-eb211c80319c"
    assert run_span_id(run) == run_span_id(run) != run_span_id(str(uuid.uuid4()))
    assert step_span_id(run, "a") != step_span_id(run, "b") != run_span_id(run)
    assert 0 < step_span_id(run, "a") < 2**64
