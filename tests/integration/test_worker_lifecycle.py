"""Worker life cycle against real Postgres: registration, heartbeats, deprecation, stopping."""

from __future__ import annotations

import threading
import time

import psycopg
import psycopg.conninfo
import worker_flows

from pgflow.client import Client
from pgflow.worker import Worker

DEADLINE = 30.0


def _wait(predicate: object, what: str) -> None:
    assert callable(predicate)
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_deprecated_worker_finishes_and_marks_itself_stopped(db_dsn: str) -> None:
    worker = Worker(
        [worker_flows.chain], dsn=db_dsn, heartbeat_interval=0.1, install_signal_handlers=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select worker_id, queue_name, stopped_at from pgflow.workers"
        ).fetchall()
        assert [(r[1], r[2]) for r in rows] == [(worker_flows.chain.slug, None)]
        first_beat = conn.execute("select last_heartbeat_at from pgflow.workers").fetchone()

        def beat_moved() -> bool:
            row = conn.execute("select last_heartbeat_at from pgflow.workers").fetchone()
            return row != first_beat

        _wait(beat_moved, "a heartbeat")
        conn.execute("update pgflow.workers set deprecated_at = now()")
        assert worker.wait_stopped(DEADLINE), "a deprecated worker must stop by itself"
        thread.join(DEADLINE)
        stopped = conn.execute("select stopped_at from pgflow.workers").fetchone()
        assert stopped is not None and stopped[0] is not None


def test_a_worker_stops_while_its_database_refuses_connections(
    db_dsn: str, pg_admin_dsn: str
) -> None:
    worker = Worker(
        [worker_flows.chain], dsn=db_dsn, heartbeat_interval=0.1, install_signal_handlers=False
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'alter database "{dbname}" allow_connections false')
        try:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (dbname,),
            )
            # the heartbeat finds the connection gone and the worker starts reconnecting
            _wait(lambda: worker._conn is None, "the worker to notice its lost connection")
            worker.stop()
            assert worker.wait_stopped(DEADLINE), "a stop must not wait for the database"
            thread.join(DEADLINE)
            assert raised == [], "stopping during an outage is not an error"
        finally:
            admin.execute(f'alter database "{dbname}" allow_connections true')


def test_a_running_worker_requeues_tasks_stalled_after_it_started(db_dsn: str) -> None:
    """The stalled-task sweep runs on a timer, not only when the worker starts."""
    worker = Worker(
        [worker_flows.chain], dsn=db_dsn, requeue_interval=0.2, install_signal_handlers=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    try:
        with psycopg.connect(db_dsn) as conn:
            # a worker that claimed the first task an hour ago and died, in one transaction so
            # the running worker cannot claim the task first
            dead = conn.execute(
                "select worker_id from pgflow.register_worker(gen_random_uuid(), %s, 'dead')",
                (worker_flows.chain.slug,),
            ).fetchone()
            assert dead is not None
            run = conn.execute(
                'select run_id from pgflow.start_flow(%s, \'{"word": "x"}\')',
                (worker_flows.chain.slug,),
            ).fetchone()
            assert run is not None
            claimed = conn.execute(
                "select count(*) from pgflow.claim_tasks(%s, %s, 10) where kind = 'task'",
                (worker_flows.chain.slug, dead[0]),
            ).fetchone()
            assert claimed == (1,)
            conn.execute(
                "update pgflow.step_tasks set started_at = now() - interval '1 hour',"
                " queued_at = now() - interval '2 hours'"
                " where run_id = %s",
                (run[0],),
            )
            conn.commit()

            def run_completed() -> bool:
                row = conn.execute(
                    "select status from pgflow.runs where run_id = %s", (run[0],)
                ).fetchone()
                conn.commit()
                return row == ("completed",)

            _wait(run_completed, "the stalled run to be requeued and completed")
            first = conn.execute(
                "select requeued_count, last_worker_id, attempts_count from pgflow.step_tasks"
                " where run_id = %s and step_slug = 'first'",
                (run[0],),
            ).fetchone()
            assert first == (1, worker.worker_ids[worker_flows.chain.slug], 2)
    finally:
        worker.stop()
        assert worker.wait_stopped(DEADLINE)
        thread.join(DEADLINE)


def test_each_hop_of_a_chain_is_claimed_by_the_report_of_the_step_before(db_dsn: str) -> None:
    worker = Worker([worker_flows.chain], dsn=db_dsn, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    try:
        with Client(db_dsn) as client:
            runs = [client.start(worker_flows.chain, {"word": f"w{i}"}) for i in range(3)]
            for run_id in runs:
                client.wait(run_id, timeout=DEADLINE)  # raises unless the run completed
    finally:
        worker.stop()
        thread.join(DEADLINE)
    steps = len(worker_flows.chain.steps)
    # every step after the first of each run came back with the report of the step before it
    assert worker.stats.claimed == 3 * steps
    assert worker.stats.claimed_on_report == 3 * (steps - 1)
