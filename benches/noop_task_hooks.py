"""A plugin whose four task hooks do nothing with the two fields they take, as a metrics plugin
would take them: what merely calling task hooks costs (benches/bench_task_hooks.py registers it
through PGFLOW_PLUGINS)."""

from __future__ import annotations

from pgflow.hooks import hookimpl


@hookimpl
def pgflow_task_claimed(flow_slug: str, step_slug: str) -> None:
    pass


@hookimpl
def pgflow_task_started(flow_slug: str, step_slug: str) -> None:
    pass


@hookimpl
def pgflow_task_finished(flow_slug: str, step_slug: str) -> None:
    pass


@hookimpl
def pgflow_task_failed(flow_slug: str, step_slug: str) -> None:
    pass
