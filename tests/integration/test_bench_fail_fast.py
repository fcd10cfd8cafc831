"""`pgflow bench` fails fast, with the worker's own error, when a worker process cannot start or
exits mid-run, and its progress line counts the scenario's totals."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow.bench import runner
from pgflow.bench.flows import map_flow
from pgflow.errors import BenchError


def test_a_worker_that_cannot_start_fails_the_bench_with_its_error(db_dsn: str) -> None:
    workers = runner._Workers(db_dsn, "no_such_module:flow", runner.BenchSettings())
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn, pytest.raises(BenchError) as caught:
            workers.wait_registered(conn, "bench_map")
    finally:
        workers.stop()
    message = str(caught.value)
    assert message.startswith("a worker process exited with code 1: error: ")
    assert "no_such_module" in message


def test_a_worker_that_dies_mid_run_fails_the_bench_at_once(db_dsn: str) -> None:
    settings = runner.BenchSettings(timeout=600)
    shown: list[str] = []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        runner._reset_flow(conn, map_flow.slug, map_flow.shape())
        workers = runner._Workers(db_dsn, "pgflow.bench.flows:map_flow", settings)
        try:
            workers.wait_registered(conn, map_flow.slug)
            os.kill(workers.processes[0].pid, signal.SIGKILL)
            workers.processes[0].wait(30)
            # a run nobody will finish: without the check this would wait out the timeout
            conn.execute("select pgflow.start_flow('bench_map', %s)", (Jsonb([1, 2, 3]),))
            wait = runner._Waiter(conn, settings, shown.append, workers)
            with pytest.raises(BenchError, match="a worker process exited with code -9"):
                wait.runs(map_flow.slug, 1, "map", total=(1, 3))
        finally:
            workers.stop()
            runner._reset_flow(conn, map_flow.slug, None)


def test_the_chain_progress_counts_the_whole_scenario(db_dsn: str) -> None:
    shown: list[str] = []
    settings = runner.BenchSettings(chain_runs=2)
    runner.run_benchmarks(db_dsn, ["chain"], settings, shown.append)
    lines = [line for line in shown if line]
    assert lines, "no progress was shown"
    assert all("/2 runs" in line and "/100 tasks" in line for line in lines), lines
