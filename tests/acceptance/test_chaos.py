"""Chaos: `pgflow worker` processes are SIGKILLed and their connections terminated while they
run a large map and many diamonds; in the end every run completed with the right output, every
task completed once with the right output, and nothing is left queued, started or in a queue.

A killed worker's tasks stay started until the stalled-task sweep requeues them, their step's
timeout (1 s here) + 30 s after they started; the chaos lasts shorter than that margin, so no
task can be requeued the 3 times after which the sweep gives up on it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance_flows import (
    WorkerPool,
    WorkerProcess,
    chaos_diamond,
    chaos_diamond_outputs,
    chaos_map,
    start_run,
    wait_until,
)

Conn = psycopg.Connection[Any]

FLOWS = ["acceptance_flows:chaos_map", "acceptance_flows:chaos_diamond"]
WORKERS = 3
MAP_SIZE = 2000
DIAMONDS = 200
CHAOS_SECONDS = 20.0  # under the sweep's 30 s margin (see above)
WORKER_OPTIONS = (
    "--requeue-interval", "1", "--heartbeat-interval", "1", "--poll-interval", "0.5",
    "--shutdown-grace", "1", "--quiet",
)  # fmt: skip


def _terminate_one_backend(conn: Conn, rng: random.Random) -> bool:
    """Terminate one of the workers' connections to this database, at random."""
    pids = [
        row[0]
        for row in conn.execute(
            "select pid from pg_stat_activity where datname = current_database() "
            "and application_name = 'pgflow' and pid <> pg_backend_pid()"
        ).fetchall()
    ]
    if not pids:
        return False
    row = conn.execute("select pg_terminate_backend(%s)", (rng.choice(pids),)).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_runs_complete_exactly_once_while_workers_are_killed(
    db_dsn: str, conn: Conn, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pool = WorkerPool(db_dsn, tmp_path)
    alive: list[WorkerProcess] = []
    killed = terminated = 0
    began = time.monotonic()
    try:
        # the first worker compiles both flows, so that runs can start
        alive.append(pool.start(FLOWS, *WORKER_OPTIONS, conn=conn))
        alive += [
            pool.start(FLOWS, *WORKER_OPTIONS, conn=conn, ready_timeout=None)
            for _ in range(WORKERS - 1)
        ]
        map_run = start_run(conn, chaos_map.slug, list(range(MAP_SIZE)))
        diamond_runs: dict[str, int] = {}
        next_kill = time.monotonic() + rng.uniform(1, 3)
        next_terminate = time.monotonic() + rng.uniform(1, 3)
        chaos_end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < chaos_end:
            # diamonds start in waves all through the chaos, so that there is always work
            wave = min(DIAMONDS - len(diamond_runs), 3)
            for _ in range(wave):
                n = len(diamond_runs)
                diamond_runs[start_run(conn, chaos_diamond.slug, {"n": n})] = n
            now = time.monotonic()
            if now >= next_kill:
                victim = rng.choice(alive)
                victim.close()  # SIGKILL to its process group
                alive.remove(victim)
                killed += 1
                next_kill = now + rng.uniform(1, 3)
            if now >= next_terminate:
                terminated += _terminate_one_backend(conn, rng)
                next_terminate = now + rng.uniform(1, 3)
            # replace the dead (killed, or exited because a terminated connection broke its start)
            alive = [w for w in alive if w.alive()]
            while len(alive) < WORKERS:
                alive.append(pool.start(FLOWS, *WORKER_OPTIONS, conn=conn, ready_timeout=None))
            time.sleep(0.1)
        assert len(diamond_runs) == DIAMONDS
        chaos_seconds = time.monotonic() - began

        def unfinished() -> int:
            row = conn.execute(
                "select count(*) from pgflow.runs where status = 'started'"
            ).fetchone()
            return int(row[0]) if row else -1

        wait_until(
            lambda: unfinished() == 0 or None,
            timeout=75,
            what="every run to finish after the chaos",
            details=lambda: f"{unfinished()} run(s) unfinished; seed {seed}",
        )
        total_seconds = time.monotonic() - began
    finally:
        pool.close()

    statuses = conn.execute("select status, count(*) from pgflow.runs group by status").fetchall()
    assert statuses == [("completed", DIAMONDS + 1)], f"{statuses}; seed {seed}"
    map_output = conn.execute(
        "select output from pgflow.runs where run_id = %s", (map_run,)
    ).fetchone()
    assert map_output == ({"chaos_double": [i * 2 for i in range(MAP_SIZE)]},)

    # every task: one row, completed, with its output
    tasks = conn.execute(
        "select r.run_id::text, t.step_slug, t.task_index, t.status, t.output, t.attempts_count "
        "from pgflow.step_tasks t join pgflow.runs r using (run_id)"
    ).fetchall()
    assert len(tasks) == MAP_SIZE + DIAMONDS * 4
    attempts = 0
    for run_id, step, index, status, output, attempts_count in tasks:
        assert status == "completed", (run_id, step, index, status, seed)
        if run_id == map_run:
            assert output == index * 2
        else:
            assert output == chaos_diamond_outputs(diamond_runs[run_id])[step]
        attempts += attempts_count
    for slug in (chaos_map.slug, chaos_diamond.slug):
        left = conn.execute(f"select count(*) from pgmq.q_{slug}").fetchone()
        assert left == (0,), f"messages left in pgmq.q_{slug}; seed {seed}"
    requeued = conn.execute("select coalesce(sum(requeued_count), 0) from pgflow.step_tasks")
    print(
        f"\nchaos: seed {seed}, {WORKERS} workers, {killed} killed, {terminated} backends "
        f"terminated over {chaos_seconds:.0f} s; {len(tasks)} tasks ({attempts} attempts, "
        f"{requeued.fetchone()[0]} requeued); every run done after {total_seconds:.0f} s"
    )
    assert killed >= 5 and terminated >= 5, (killed, terminated)
