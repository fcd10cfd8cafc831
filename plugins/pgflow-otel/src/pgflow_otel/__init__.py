"""OpenTelemetry traces of pgflow runs (a pgflow plugin, entry point `otel`).

A span per task attempt (from the task hooks, in the worker that ran it), per step and per run
(from the run and step events, relayed once for the fleet), all in the trace of the span that
was current where `Client.start` was called: the starting process hands its trace context along
with the run (`pgflow_run_headers`, kept in `pgflow.run_headers`). See README.md.

Inert unless the application sets a TracerProvider (`opentelemetry.trace.set_tracer_provider`,
or `opentelemetry-instrument`) before pgflow loads its plugins. The entry point names `plugin`,
built at that load: without a TracerProvider it implements no hook at all, so a worker calls no
task hook for it (it skips hooks nobody implements), relays no events for it, and a client adds
nothing to the start of a run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from opentelemetry import propagate, trace

from pgflow.hooks import hookimpl
from pgflow_otel.spans import (
    RunEnded,
    SpanWriter,
    StepEnded,
    TaskDone,
    run_span_id,
    step_span_id,
    tracing_configured,
)

__all__ = [
    "InertPlugin",
    "TracingPlugin",
    "TracingPluginWithEvents",
    "make_plugin",
    "run_span_id",
    "step_span_id",
    "tracing_configured",
    "writer",
]

#: the one span writer of this process, shared by every plugin object and worker
writer: Final = SpanWriter()

_STEP_ENDS: Final = frozenset({"step:completed", "step:failed", "step:skipped"})
_RUN_ENDS: Final = frozenset({"run:completed", "run:failed", "run:cancelled"})


class TracingPlugin:
    """Trace context for runs this process starts, and a span per task attempt it runs."""

    @hookimpl
    def pgflow_run_headers(self) -> Mapping[str, str] | None:
        if not trace.get_current_span().get_span_context().is_valid:
            return None  # no trace to carry (and no statement of more for the start)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the application's propagator: W3C trace context by default
        return carrier or None

    @hookimpl
    def pgflow_worker_started(self, dsn: str) -> None:
        writer.start(dsn)

    @hookimpl
    def pgflow_worker_stopped(self) -> None:
        writer.stop()

    @hookimpl
    def pgflow_task_finished(
        self,
        flow_slug: str,
        run_id: str,
        step_slug: str,
        task_index: int,
        attempt: int,
        worker_id: str,
        duration_seconds: float,
    ) -> None:
        if tracing_configured():
            writer.put(
                TaskDone(
                    flow_slug,
                    run_id,
                    step_slug,
                    task_index,
                    attempt,
                    worker_id,
                    time.time_ns(),
                    duration_seconds,
                )
            )

    @hookimpl
    def pgflow_task_failed(
        self,
        flow_slug: str,
        run_id: str,
        step_slug: str,
        task_index: int,
        attempt: int,
        worker_id: str,
        duration_seconds: float,
        error: str,
        will_retry: bool,
    ) -> None:
        if tracing_configured():
            writer.put(
                TaskDone(
                    flow_slug,
                    run_id,
                    step_slug,
                    task_index,
                    attempt,
                    worker_id,
                    time.time_ns(),
                    duration_seconds,
                    error,
                    will_retry,
                )
            )


class TracingPluginWithEvents(TracingPlugin):
    """`TracingPlugin`, and a span per step and per run when they end (from the events)."""

    @hookimpl
    def pgflow_event(self, event: Mapping[str, object]) -> None:
        kind = event.get("event_type")
        if (kind not in _STEP_ENDS and kind not in _RUN_ENDS) or not tracing_configured():
            return
        run_id, status = str(event["run_id"]), str(event.get("status"))
        if kind in _STEP_ENDS:
            writer.put(StepEnded(run_id, str(event["step_slug"]), status))
        else:
            writer.put(RunEnded(run_id, status))


class InertPlugin:
    """What the entry point gives when no TracerProvider is set: no hook, so no cost."""


def make_plugin() -> TracingPlugin | InertPlugin:
    """The plugin object: every hook if a TracerProvider is set now, none otherwise."""
    return TracingPluginWithEvents() if tracing_configured() else InertPlugin()


def __getattr__(name: str) -> object:
    # `plugin` (the entry point) is made at each load, so a plugin manager built after the
    # application set its TracerProvider gets the event sink
    if name == "plugin":
        return make_plugin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
