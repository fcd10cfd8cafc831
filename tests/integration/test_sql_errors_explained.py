"""The SQL answers like pgflow (constraint names, pgflow's messages); the Client, the Worker and
the command line say what those answers mean and what to do."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from subprocess import CompletedProcess

import psycopg
import pytest
import worker_flows
from contract_helpers import define_flow, map_step, single

from pgflow.client import Client
from pgflow.db.constraints import explain
from pgflow.errors import ConfigError, FlowMismatch
from pgflow.worker import Worker


def test_client_start_of_an_unknown_flow_says_how_to_define_it(db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(ConfigError) as caught:
        client.start("nowhere", {})
    message = str(caught.value)
    assert "flow 'nowhere' does not exist in this database" in message
    assert "start a worker that serves it" in message
    assert isinstance(caught.value.__cause__, psycopg.errors.ForeignKeyViolation)


def test_client_start_of_a_root_map_flow_without_a_list(
    db_dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    define_flow(conn, "mapping", [map_step("each")])
    with Client(db_dsn) as client, pytest.raises(ConfigError, match="must be a JSON array"):
        client.start("mapping", {"not": "a list"})


def test_sql_null_input_is_explained(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    define_flow(conn, "plain", [single("a")])
    with pytest.raises(psycopg.errors.NotNullViolation) as caught:
        conn.execute("select pgflow.start_flow('plain', null)")
    explained = explain(caught.value)
    assert explained is not None and "must not be SQL NULL" in str(explained)


def test_compiling_a_flow_that_differs_raises_flow_mismatch_in_pgflows_words(
    db_dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    define_flow(conn, "wt_chain", [single("first")])
    with Client(db_dsn) as client, pytest.raises(FlowMismatch) as caught:
        client.start(worker_flows.chain, {"word": "x"})
    assert caught.value.differences == [
        "Step count differs: 3 vs 1",
        "Step at index 1: missing in second shape (first has 'second')",
        "Step at index 2: missing in second shape (first has 'third')",
    ]
    with pytest.raises(FlowMismatch):
        Worker([worker_flows.chain], dsn=db_dsn, install_signal_handlers=False).run()


def test_the_command_line_explains_constraint_errors(
    db_dsn: str, run_pgflow: Callable[..., CompletedProcess[str]]
) -> None:
    result = run_pgflow("start", "nowhere", "--dsn", db_dsn)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: flow 'nowhere' does not exist in this database")


def test_a_worker_whose_row_was_pruned_registers_again(db_dsn: str) -> None:
    flow = worker_flows.chain
    worker = Worker([flow], dsn=db_dsn, heartbeat_interval=0.2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(30)
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            worker_id = worker.worker_ids[flow.slug]
            conn.execute("delete from pgflow.workers where worker_id = %s", (worker_id,))
            deadline = time.monotonic() + 30
            while conn.execute(
                "select count(*) from pgflow.workers where worker_id = %s", (worker_id,)
            ).fetchone() != (1,):
                assert time.monotonic() < deadline, "the worker did not register again"
                threading.Event().wait(0.05)
        with Client(db_dsn) as client:
            run_id = client.start(flow, {"word": "again"})
            assert client.wait(run_id, timeout=30)["third"]["text"] == "again-1-2-3"
    finally:
        worker.stop()
        assert worker.wait_stopped(30)
        thread.join(30)


def test_a_worker_whose_row_was_pruned_before_a_claim_registers_and_claims(db_dsn: str) -> None:
    flow = worker_flows.chain
    # heartbeats too far apart to help: the claim itself must notice
    worker = Worker([flow], dsn=db_dsn, heartbeat_interval=3600, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(30)
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("select pgflow.prune_data_older_than('0 seconds')")
            assert conn.execute("select count(*) from pgflow.workers").fetchone() == (0,)
        with Client(db_dsn) as client:
            run_id = client.start(flow, {"word": "claimed"})
            assert client.wait(run_id, timeout=30)["third"]["text"] == "claimed-1-2-3"
    finally:
        worker.stop()
        assert worker.wait_stopped(30)
        thread.join(30)
