"""The event relay survives its worker being SIGKILLed: another `pgflow worker` process takes
the lease over within seconds and delivers every kept event, none lost (each at least once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import WorkerPool, basic_output, start_run, wait_for_run, wait_until
from psycopg import sql

Conn = psycopg.Connection[Any]


def _delivered(path: Path) -> set[int]:
    """Event ids a worker's JSON-lines sink wrote (a line cut short by the kill is skipped)."""
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(errors="replace").splitlines():
        try:
            ids.add(int(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def _kept(conn: Conn) -> set[int]:
    return {int(r[0]) for r in conn.execute("select id from pgflow.events").fetchall()}


def _holder(conn: Conn) -> str | None:
    row = conn.execute(
        "select holder from pgflow.event_relay where lease_until > clock_timestamp()"
    ).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.slow
def test_a_killed_relaying_worker_is_taken_over_and_no_event_is_lost(
    db_dsn: str, conn: Conn, tmp_path: Path
) -> None:
    conn.execute(
        sql.SQL("alter database {} set pgflow.events = 'on'").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    conn.execute("set pgflow.events = 'on'")  # this session starts runs too
    sinks = {name: tmp_path / f"{name}.jsonl" for name in ("a", "b")}
    pools = []
    for name, path in sinks.items():
        (tmp_path / name).mkdir()
        pools.append(WorkerPool(db_dsn, tmp_path / name, env={"PGFLOW_EVENTS_JSONL": str(path)}))
    try:
        workers = [pool.start(["acceptance_flows:basic"], "--quiet", conn=conn) for pool in pools]
        holder = wait_until(lambda: _holder(conn), timeout=30, what="one relay to lead")

        def all_delivered() -> bool:
            return _kept(conn) <= _delivered(sinks["a"]) | _delivered(sinks["b"])

        first = [start_run(conn, "acc_basic", {"n": n}) for n in range(5)]
        for n, run_id in enumerate(first):
            assert wait_for_run(conn, run_id) == ("completed", basic_output(n))
        wait_until(all_delivered, timeout=30, what="the first runs' events delivered")

        leader_pid = int(holder.split(":")[1])
        (leader,) = [w for w in workers if w.pid == leader_pid]
        (survivor,) = [w for w in workers if w.pid != leader_pid]
        leader.close()  # SIGKILL: it gives nothing back

        later = [start_run(conn, "acc_basic", {"n": n}) for n in range(5, 10)]
        for n, run_id in enumerate(later, start=5):
            assert wait_for_run(conn, run_id) == ("completed", basic_output(n))
        wait_until(
            all_delivered,
            timeout=60,
            what="the later runs' events delivered by the survivor",
            details=survivor.describe,
        )
        new_holder = _holder(conn)
        assert new_holder is not None and int(new_holder.split(":")[1]) == survivor.pid
        kept = _kept(conn)
        assert len(kept) >= 10 * 4  # run and step events of ten two-step runs
    finally:
        for pool in pools:
            pool.close()
