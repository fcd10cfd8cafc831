"""pgflow-prometheus: two `pgflow worker` subprocesses with the plugin serve one run of a map
flow; their endpoints, scraped over HTTP, count each task once between them, and exactly one of
them exports the fleet-wide gauges, another one taking over when it dies."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import WorkerPool, WorkerProcess, start_run, wait_for_run, wait_until
from prometheus_client.parser import text_string_to_metric_families

import pgflow_prometheus
from pgflow_prometheus import PORT_ENV, configured_port

SRC = Path(pgflow_prometheus.__file__).resolve().parents[1]
MANY = "acceptance_flows:many"
FLEET_GAUGES = ("pgflow_queue_depth", "pgflow_live_workers")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def workers(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerPool]:
    # the workers import the plugin from its source tree, installed or not
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    )
    env = {PORT_ENV: "0"}  # each worker picks a free port and logs it
    installed = importlib.metadata.entry_points(group="pgflow", name="prometheus")
    if not installed:
        env["PGFLOW_PLUGINS"] = "pgflow_prometheus"
    pool = WorkerPool(db_dsn, tmp_path, env=env)
    try:
        yield pool
    finally:
        pool.close()


def metrics_port(worker: WorkerProcess) -> int:
    worker.wait_for_log("serving Prometheus metrics on port")
    match = re.search(r"serving Prometheus metrics on port (\d+)", worker.log())
    assert match is not None, worker.describe()
    return int(match.group(1))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (n, got), value in samples.items() if n == name and wanted <= got)


def exports_fleet_gauges(samples: Samples) -> bool:
    return any(name in FLEET_GAUGES for name, _ in samples)


def test_two_workers_count_each_task_once_and_one_exports_the_fleet_gauges(
    workers: WorkerPool, conn: psycopg.Connection[Any]
) -> None:
    first = workers.start([MANY], "--concurrency", "4", conn=conn)
    second = workers.start([MANY], "--concurrency", "4", conn=conn)
    ports = [metrics_port(first), metrics_port(second)]
    assert ports[0] != ports[1]

    def details() -> str:
        return first.describe() + "\n" + second.describe()

    items = list(range(60))
    run_id = start_run(conn, "acc_many", items)
    status, _ = wait_for_run(conn, run_id, timeout=120, details=details)
    assert status == "completed"

    scraped = [scrape(port) for port in ports]
    step = {"flow": "acc_many", "step": "times_three"}
    for name in ("pgflow_tasks_claimed_total", "pgflow_tasks_completed_total"):
        assert sum(total(s, name, **step) for s in scraped) == len(items), (name, details())
    for name in ("pgflow_tasks_failed_total", "pgflow_tasks_retried_total"):
        assert sum(total(s, name, **step) for s in scraped) == 0, name
    observed = sum(total(s, "pgflow_task_duration_seconds_count", **step) for s in scraped)
    assert observed == len(items)

    # the first worker to try takes the lock at once; the other never exports while it lives
    leaders = wait_until(
        lambda: [i for i, port in enumerate(ports) if exports_fleet_gauges(scrape(port))],
        timeout=30,
        what="a worker exporting the fleet gauges",
        details=details,
    )
    assert len(leaders) == 1, leaders
    leader_samples = scrape(ports[leaders[0]])
    assert total(leader_samples, "pgflow_live_workers", flow="acc_many") == 2
    assert total(leader_samples, "pgflow_queue_depth", flow="acc_many") == 0

    # the leader dies: its session, and the lock, go with it, and the other worker takes over
    pool = [first, second]
    pool[leaders[0]].close()
    survivor = 1 - leaders[0]
    wait_until(
        lambda: exports_fleet_gauges(scrape(ports[survivor])),
        timeout=30,
        what="the surviving worker to export the fleet gauges",
        details=details,
    )


def test_nothing_is_served_unless_the_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORT_ENV, raising=False)
    assert configured_port() is None
    pgflow_prometheus.pgflow_worker_started(workers={}, dsn="postgresql://unused/none")
    assert pgflow_prometheus._exporter is None


@pytest.mark.parametrize("value", ["http", "-1", "70000", "9 0"])
def test_a_bad_port_is_a_one_line_error_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(PORT_ENV, value)
    with pytest.raises(ValueError) as raised:
        configured_port()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{PORT_ENV}={value!r} is not a port number: set it to a port")


def test_a_worker_with_a_bad_port_logs_one_error_line_and_runs_without_metrics(
    workers: WorkerPool, conn: psycopg.Connection[Any]
) -> None:
    assert workers.env is not None
    workers.env[PORT_ENV] = "http"
    worker = workers.start([MANY], conn=conn)
    run_id = start_run(conn, "acc_many", [1, 2])
    assert wait_for_run(conn, run_id, details=worker.describe)[0] == "completed"
    log = worker.log()
    assert f"no Prometheus metrics: {PORT_ENV}='http' is not a port number: set it to a port" in log
    assert "Traceback" not in log and "serving Prometheus metrics" not in log


def test_a_port_in_use_is_one_error_line_naming_it(
    workers: WorkerPool, conn: psycopg.Connection[Any]
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert workers.env is not None
        workers.env[PORT_ENV] = str(port)
        worker = workers.start([MANY], conn=conn)
        worker.wait_for_log(f"no Prometheus metrics: cannot listen on port {port}")
    assert "Traceback" not in worker.log()
    assert worker.alive()


@pytest.mark.parametrize(("port", "implemented"), [(None, False), ("0", True)])
def test_task_hooks_are_implemented_only_when_the_port_is_set(
    port: str | None, implemented: bool
) -> None:
    # In a fresh interpreter: the module decides at import, as a worker process imports it.
    env = {k: v for k, v in os.environ.items() if k != PORT_ENV}
    # this plugin alone: other installed distributions may implement task hooks
    others = {e.name for e in importlib.metadata.entry_points(group="pgflow")} - {"prometheus"}
    env["PGFLOW_DISABLE_PLUGINS"] = ",".join(sorted(others))
    if port is not None:
        env[PORT_ENV] = port
    probe = (
        "from pgflow.plugins.manager import task_hooks\n"
        "hooks = task_hooks()\n"
        "print([h is not None for h in (hooks.claimed, hooks.finished, hooks.failed)])\n"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str([implemented] * 3)
