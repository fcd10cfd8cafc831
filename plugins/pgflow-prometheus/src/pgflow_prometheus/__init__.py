"""Prometheus metrics for pgflow workers (a pgflow plugin, entry point `prometheus`).

Nothing happens unless `PGFLOW_PROMETHEUS_PORT` is set (without it the task hooks are not even
implemented, so a worker skips them): then each worker process serves, on that
port (0: a free one, logged), its own task counters and durations, plus, in one elected worker
of the database, the fleet-wide gauges (see `fleet_gauges`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from pgflow.hooks import hookimpl
from pgflow_prometheus.fleet_gauges import FleetGauges
from pgflow_prometheus.worker_metrics import WorkerMetrics

__all__ = ["PORT_ENV"]

PORT_ENV: Final = "PGFLOW_PROMETHEUS_PORT"

logger = logging.getLogger("pgflow.prometheus")


class _Exporter:
    """What one worker process serves, from `pgflow_worker_started` to `pgflow_worker_stopped`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, fleet: FleetGauges) -> None:
        self.server = server
        self.thread = thread
        self.fleet = fleet

    def stop(self) -> None:
        self.fleet.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


_exporter: _Exporter | None = None
_metrics: WorkerMetrics | None = None


def configured_port() -> int | None:
    """The port `PGFLOW_PROMETHEUS_PORT` asks for; None when it is unset or empty."""
    text = os.environ.get(PORT_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(
            f"{PORT_ENV}={os.environ[PORT_ENV]!r} is not a port number: set it to a port "
            "(0 picks a free one and logs it), or unset it to serve no metrics"
        )
    return int(text)


@hookimpl
def pgflow_worker_started(workers: Mapping[str, str], dsn: str) -> None:
    global _exporter, _metrics
    try:
        port = configured_port()
    except ValueError as exc:
        logger.error("no Prometheus metrics: %s", exc)
        return
    if port is None or _exporter is not None:
        return
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    fleet = FleetGauges(dsn)
    registry.register(fleet)
    try:
        server, thread = start_http_server(port, registry=registry)
    except OSError as exc:
        logger.error(
            "no Prometheus metrics: cannot listen on port %d (%s): free it or set %s to "
            "another port (0 picks a free one)",
            port,
            exc.strerror or exc,
            PORT_ENV,
        )
        return
    fleet.start()
    _exporter, _metrics = _Exporter(server, thread, fleet), metrics
    logger.info(
        "serving Prometheus metrics on port %d (/metrics) for worker %s",
        server.server_port,
        ", ".join(workers.values()),
    )


@hookimpl
def pgflow_worker_stopped() -> None:
    global _exporter, _metrics
    if _exporter is not None:
        _exporter.stop()
    _exporter = _metrics = None


@hookimpl
def pgflow_task_claimed(flow_slug: str, step_slug: str) -> None:
    if _metrics is not None:
        _metrics.task_claimed(flow_slug, step_slug)


@hookimpl
def pgflow_task_finished(flow_slug: str, step_slug: str, duration_seconds: float) -> None:
    if _metrics is not None:
        _metrics.task_finished(flow_slug, step_slug, duration_seconds)


@hookimpl
def pgflow_task_failed(
    flow_slug: str, step_slug: str, duration_seconds: float, will_retry: bool
) -> None:
    if _metrics is not None:
        _metrics.task_failed(flow_slug, step_slug, duration_seconds, will_retry)


if not os.environ.get(PORT_ENV, "").strip():
    # Installed but not configured: no task hooks at all. A worker calls a task hook only when
    # some plugin implements it (it asks once, at start), so this plugin then costs nothing per
    # task. The environment is read at import, which is when a worker process loads its plugins.
    del pgflow_task_claimed, pgflow_task_finished, pgflow_task_failed
