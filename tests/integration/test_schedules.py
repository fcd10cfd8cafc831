"""Schedules on a real database: one run per tick under many workers and crashes, catch-up
after an outage, pause and resume, reconciliation of the code's schedules, pruning, the tick
reaching the run, the CLI, and who may do what (docs/schedules.md).

Nothing here waits for real minutes: an outage is simulated by moving a schedule's recorded
ticks into the past (as its owner), and the workers test uses a 6-field cron with seconds."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from worker_helpers import RunningWorker, wait_until

from pgflow import Flow, Schedule, ScheduleError, ScheduleNotFound
from pgflow.cli.app import main
from pgflow.client import AsyncClient, Client
from pgflow.db.prune import prune
from pgflow.worker import Worker
from pgflow.worker.schedules import Firing, ScheduleFirer, sync_schedules

Conn = psycopg.Connection[tuple[Any, ...]]
UTC = timezone.utc

ticking = Flow("ticking", schedules=[Schedule("every_second", "* * * * * *", input={"n": 1})])


@ticking.step()
def record(input: Any) -> Any:
    return input


def _flow(conn: Conn, slug: str = "sched_flow") -> str:
    conn.execute("select pgflow.create_flow(%s)", (slug,))
    conn.execute("select pgflow.add_step(%s, 'only')", (slug,))
    return slug


def _overdue(conn: Conn, name: str, minutes: int, last_tick: bool = True) -> datetime:
    """Simulate an outage: the schedule's last tick was `minutes` whole minutes ago and its next
    one is long due. Returns that last tick."""
    row = conn.execute(
        "select date_trunc('minute', now()) - make_interval(mins => %s)", (minutes,)
    ).fetchone()
    assert row is not None
    last: datetime = row[0]
    conn.execute(
        "update pgflow.schedules set ticks_from = %s - interval '1 hour', last_tick_at = %s, "
        "next_tick_at = %s + interval '1 minute' where schedule_name = %s",
        (last, last if last_tick else None, last, name),
    )
    return last


def _runs_per_tick(conn: Conn, name: str) -> Counter[str]:
    rows = conn.execute(
        "select h.headers ->> 'pgflow-scheduled-at' from pgflow.run_headers h "
        "where h.headers ->> 'pgflow-schedule' = %s",
        (name,),
    ).fetchall()
    return Counter(r[0] for r in rows)


def _derived_run_id(schedule_id: uuid.UUID, tick: datetime) -> uuid.UUID:
    text = f"{schedule_id}@{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
    raw = bytearray(hashlib.sha256(text.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def test_catch_up_after_an_outage_fires_the_latest_tick_and_at_most_n_missed(
    conn: Conn, db_dsn: str
) -> None:
    slug = _flow(conn)
    with Client(db_dsn) as client:
        client.add_schedule(slug, "skipper", "* * * * *", {"a": 1})
        client.add_schedule(slug, "catcher", "* * * * *", {"a": 2}, catch_up=3)
    last = {name: _overdue(conn, name, 10) for name in ("skipper", "catcher")}
    firing = ScheduleFirer([slug]).fire(conn)
    fired: dict[str, list[datetime]] = {}
    for flow_slug, name, tick, _ in firing.fired:
        assert flow_slug == slug
        fired.setdefault(name, []).append(tick)
    # ten ticks came due; skip fires only the latest, catch_up=3 the three missed before it too
    assert len(fired["skipper"]) == 1 and fired["skipper"][0] == last["skipper"] + timedelta(
        minutes=10
    )
    assert fired["catcher"] == [last["catcher"] + timedelta(minutes=m) for m in (7, 8, 9, 10)]
    # nothing more is due until the next minute, and looking again fires nothing
    assert ScheduleFirer([slug]).fire(conn).fired == []
    schedule_id, last_tick, last_run = conn.execute(
        "select schedule_id, last_tick_at, last_run_id from pgflow.schedules "
        "where schedule_name = 'catcher'"
    ).fetchone() or (None, None, None)
    assert last_tick == fired["catcher"][-1]
    assert last_run == _derived_run_id(schedule_id, last_tick)
    inputs = conn.execute(
        "select r.input from pgflow.runs r join pgflow.run_headers h on h.run_id = r.run_id "
        "where h.headers ->> 'pgflow-schedule' = 'catcher'"
    ).fetchall()
    assert [r[0] for r in inputs] == [{"a": 2}] * 4


def test_pruning_keeps_the_last_tick_so_catch_up_never_refires(conn: Conn, db_dsn: str) -> None:
    slug = _flow(conn)
    with Client(db_dsn) as client:
        client.add_schedule(slug, "kept", "* * * * *", catch_up=100)
    last = _overdue(conn, "kept", 5)
    first = ScheduleFirer([slug]).fire(conn).fired
    assert len(first) == 5
    # the runs finish and are pruned, with their headers
    for _, _, _, run_id in first:
        conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    assert prune(db_dsn, timedelta(0)).runs == 5
    assert _runs_per_tick(conn, "kept") == Counter()
    # the schedule counts ticks from before those (its next tick to be computed again): only
    # ticks after the last one, which the schedule keeps, may fire
    conn.execute(
        "update pgflow.schedules set next_tick_at = null, ticks_from = %s "
        "where schedule_name = 'kept'",
        (last - timedelta(minutes=30),),
    )
    assert ScheduleFirer([slug]).fire(conn).fired == []


def test_many_firers_at_once_start_one_run_per_tick(conn: Conn, db_dsn: str) -> None:
    slug = _flow(conn)
    with Client(db_dsn) as client:
        for i in range(5):
            client.add_schedule(slug, f"s{i}", "* * * * *", catch_up=4)
    for i in range(5):
        _overdue(conn, f"s{i}", 6)
    barrier = threading.Barrier(6)
    fired: list[int] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as own:
                barrier.wait(timeout=30)
                fired.append(len(ScheduleFirer([slug]).fire(own).fired))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(fired) == 25  # 5 schedules x (latest + 4 missed)
    for i in range(5):
        per_tick = _runs_per_tick(conn, f"s{i}")
        assert len(per_tick) == 5 and set(per_tick.values()) == {1}


def test_a_firer_killed_before_its_commit_leaves_nothing_and_the_tick_fires_once(
    conn: Conn, db_dsn: str
) -> None:
    slug = _flow(conn)
    with Client(db_dsn) as client:
        client.add_schedule(slug, "crashy", "* * * * *", catch_up=2)
    _overdue(conn, "crashy", 3)
    doomed = psycopg.connect(db_dsn, autocommit=True)
    pid = doomed.info.backend_pid
    transaction = doomed.transaction()
    transaction.__enter__()
    # mid-fire: the schedule is locked and its runs started, nothing committed yet
    fired = ScheduleFirer([slug])._fire_one
    row = doomed.execute(
        "select s.schedule_id, s.flow_slug, s.schedule_name, s.cron, s.timezone, s.catch_up, "
        "s.ticks_from, s.next_tick_at, s.last_tick_at, now() "
        "from pgflow.claim_due_schedules(%s, 10) s",
        ([slug],),
    ).fetchone()
    assert row is not None
    out = Firing()
    assert fired(doomed, row, out) and len(out.fired) == 3
    # another worker looking meanwhile skips the locked schedule
    assert ScheduleFirer([slug]).fire(conn).fired == []
    conn.execute("select pg_terminate_backend(%s)", (pid,))  # the worker dies
    with pytest.raises(psycopg.OperationalError):
        transaction.__exit__(None, None, None)
    doomed.close()
    assert _runs_per_tick(conn, "crashy") == Counter()
    again = ScheduleFirer([slug]).fire(conn).fired
    assert [t for _, _, t, _ in again] == [t for _, _, t, _ in out.fired]
    assert set(_runs_per_tick(conn, "crashy").values()) == {1}


def test_pause_fires_nothing_and_resume_does_not_catch_up_the_pause(
    conn: Conn, db_dsn: str
) -> None:
    slug = _flow(conn)
    with Client(db_dsn) as client:
        client.add_schedule(slug, "napper", "* * * * *", catch_up=10)
        paused = client.pause_schedule(slug, "napper")
        assert paused.state == "paused" and paused.paused_at is not None
        _overdue(conn, "napper", 5)
        assert ScheduleFirer([slug]).fire(conn).fired == []
        resumed = client.resume_schedule(slug, "napper")
        assert resumed.state == "active" and resumed.next_tick_at is not None
        now = conn.execute("select now()").fetchone()
        assert now is not None and resumed.next_tick_at > now[0]
        # the ticks of the pause are not due: only ticks after the resume count
        assert ScheduleFirer([slug]).fire(conn).fired == []
        with pytest.raises(ScheduleNotFound, match='has no schedule named "ghost"'):
            client.pause_schedule(slug, "ghost")


def test_reconciliation_creates_updates_disables_and_leaves_run_time_schedules_alone(
    conn: Conn, db_dsn: str
) -> None:
    def declared(*schedules: Schedule) -> Flow:
        flow = Flow("reconciled", schedules=schedules)
        flow.step("only")(lambda input: input)
        return flow

    v1 = declared(Schedule("a", "0 3 * * *"), Schedule("b", "0 4 * * *"))
    with Client(db_dsn) as client:
        client.start(v1, {})  # compiles the flow
        assert sync_schedules(conn, v1, None)["created"] == ["a", "b"]
        client.pause_schedule("reconciled", "a")
        client.add_schedule("reconciled", "ops", "*/5 * * * *", {"by": "ops"})
        v2 = declared(
            Schedule("a", "0 5 * * *", timezone="Europe/Paris"),
            Schedule("c", "0 6 * * *"),
            Schedule("ops", "0 0 * * *"),
        )
        outcome = sync_schedules(conn, v2, None)
        assert outcome == {
            "created": ["c"],
            "updated": ["a"],
            "unchanged": [],
            "disabled": ["b"],
            "conflicts": ["ops"],
        }
        found = {s.name: s for s in client.schedules("reconciled")}
    assert (found["a"].cron, found["a"].timezone, found["a"].state) == (
        "0 5 * * *",
        "Europe/Paris",
        "paused",  # the pause outlives the redeploy
    )
    assert found["b"].state == "removed from code" and found["b"].origin == "code"
    assert (found["ops"].cron, found["ops"].origin, found["ops"].input) == (
        "*/5 * * * *",
        "runtime",
        {"by": "ops"},
    )
    assert sync_schedules(conn, v2, None)["unchanged"] == ["a", "c"]
    with Client(db_dsn) as client:
        with pytest.raises(ScheduleError, match="is declared in the code"):
            client.remove_schedule("reconciled", "a")
        client.remove_schedule("reconciled", "b")  # no longer in the code: may go
        with pytest.raises(ScheduleError, match="already has a schedule named"):
            client.add_schedule("reconciled", "c", "* * * * *")
        with pytest.raises(ScheduleError, match="does not parse"):
            client.add_schedule("reconciled", "bad", "61 * * * *")
        with pytest.raises(ScheduleError, match=r"flow .*nowhere.* does not exist"):
            client.add_schedule("nowhere", "x", "* * * * *")
        assert {s.name for s in client.schedules("reconciled")} == {"a", "c", "ops"}


def test_the_async_client_manages_schedules_too(conn: Conn, db_dsn: str) -> None:
    asyncio.run(_manage_asynchronously(_flow(conn), db_dsn))


async def _manage_asynchronously(slug: str, db_dsn: str) -> None:
    async with AsyncClient(db_dsn) as client:
        info = await client.add_schedule(slug, "async_one", "0 12 * * MON", timezone="Asia/Tokyo")
        assert info.origin == "runtime" and info.next_tick_at is not None
        assert info.next_tick_at.astimezone(UTC).hour == 3  # 12:00 in Tokyo
        assert (await client.pause_schedule(slug, "async_one")).state == "paused"
        assert (await client.resume_schedule(slug, "async_one")).state == "active"
        assert [s.name for s in await client.schedules(slug)] == ["async_one"]
        await client.remove_schedule(slug, "async_one")
        assert await client.schedules(slug) == []


def test_workers_fire_a_schedule_once_per_tick_and_the_tick_reaches_the_run(
    conn: Conn, db_dsn: str
) -> None:
    workers = [
        RunningWorker(
            Worker([ticking], dsn=db_dsn, install_signal_handlers=False, poll_interval=0.2)
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    try:
        wait_until(
            lambda: sum(_runs_per_tick(conn, "every_second").values()) >= 4,
            "four ticks of a schedule that ticks every second",
        )
    finally:
        for w in workers:
            w.stop()
    per_tick = _runs_per_tick(conn, "every_second")
    assert set(per_tick.values()) == {1}, per_tick
    assert sum(w.worker.stats.ticks_fired for w in workers) == len(per_tick)
    with Client(db_dsn) as client:
        runs = [r for r in client.runs("ticking", limit=100) if r.schedule == "every_second"]
        assert len(runs) == len(per_tick)
        run = client.get(runs[-1].run_id)
    assert run.scheduled_at is not None and run.scheduled_at.microsecond == 0
    assert run.scheduled_at <= run.started_at
    assert run.input == {"n": 1}


def test_a_worker_without_schedules_neither_reconciles_nor_fires(conn: Conn, db_dsn: str) -> None:
    running = RunningWorker(
        Worker(
            [ticking],
            dsn=db_dsn,
            install_signal_handlers=False,
            poll_interval=0.2,
            schedules=False,
        )
    )
    running.start()
    try:
        with Client(db_dsn) as client:
            # a run the worker completes: its loop has gone round, where a worker with
            # schedules would have reconciled `every_second` at start and fired it at once
            done = running.finish(client, client.start(ticking, {"n": 2}))
        assert done.status == "completed"
        assert running.worker.stats.ticks_fired == 0
        assert conn.execute("select count(*) from pgflow.schedules").fetchone() == (0,)
        assert _runs_per_tick(conn, "every_second") == Counter()
    finally:
        running.stop()


def test_the_cli_manages_schedules_and_runs_list_shows_them(
    conn: Conn, db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    slug = _flow(conn)
    assert (
        main(
            [
                "--dsn",
                db_dsn,
                "schedules",
                "add",
                slug,
                "cli_one",
                "0 3 * * *",
                "--input",
                '{"k": 1}',
                "--timezone",
                "Europe/Paris",
                "--catch-up",
                "2",
            ]
        )
        == 0
    )
    assert "schedule cli_one of flow sched_flow added; next tick" in capsys.readouterr().out
    assert main(["--dsn", db_dsn, "schedules", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:4] == ["flow", "name", "cron", "timezone"]
    assert "cli_one" in listed[1] and "Europe/Paris" in listed[1] and "runtime" in listed[1]
    assert main(["--dsn", db_dsn, "schedules", "pause", slug, "cli_one"]) == 0
    assert main(["--dsn", db_dsn, "schedules", "resume", slug, "cli_one"]) == 0
    capsys.readouterr()
    conn.execute("update pgflow.schedules set cron = '* * * * *'")
    _overdue(conn, "cli_one", 2)
    (_, _, tick, run_id), *_ = ScheduleFirer([slug]).fire(conn).fired
    assert main(["--dsn", db_dsn, "runs", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "schedule"
    assert f"cli_one @ {tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" in out and run_id in out
    assert main(["--dsn", db_dsn, "schedules", "remove", slug, "nope"]) == 1
    assert 'error: flow "sched_flow" has no schedule named "nope"' in capsys.readouterr().err
    assert main(["--dsn", db_dsn, "schedules", "add", slug, "x", "0 3 * *"]) == 1
    assert "must have 5 fields" in capsys.readouterr().err
    assert main(["--dsn", db_dsn, "schedules", "remove", slug, "cli_one"]) == 0


# -- who may do what -------------------------------------------------------------------------------


def _login(conn: Conn, db_dsn: str, name: str, role: str) -> str:
    conn.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{name}') "
        f"then create role {name} login; end if; end $$"
    )
    conn.execute(f"grant {role} to {name}")
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    params["user"] = name
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def test_clients_manage_schedules_workers_fire_them_and_neither_writes_the_table(
    conn: Conn, db_dsn: str
) -> None:
    slug = _flow(conn)
    client_dsn = _login(conn, db_dsn, "pgflow_sched_client", "pgflow_client")
    worker_dsn = _login(conn, db_dsn, "pgflow_sched_worker", "pgflow_worker")
    with psycopg.connect(client_dsn, autocommit=True) as client:
        client.execute(
            "select pgflow.create_schedule(%s, 'roles', '* * * * *', 'UTC', '{}', 1)", (slug,)
        )
        client.execute("select pgflow.set_schedule_paused(%s, 'roles', true)", (slug,))
        client.execute("select pgflow.set_schedule_paused(%s, 'roles', false)", (slug,))
        for denied in (
            "select pgflow.claim_due_schedules(array['sched_flow'], 1)",
            "select pgflow.fire_schedule_ticks(gen_random_uuid(), '{}', null)",
            "select pgflow.sync_code_schedules('sched_flow', '[]')",
            "update pgflow.schedules set paused_at = null",
            "insert into pgflow.schedules (flow_slug, schedule_name, cron, origin) "
            "values ('sched_flow', 'evil', '* * * * *', 'runtime')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                client.execute(denied)
    _overdue(conn, "roles", 3)
    with psycopg.connect(worker_dsn, autocommit=True) as worker:
        assert len(ScheduleFirer([slug]).fire(worker).fired) == 2
        schedule_id, last = worker.execute(
            "select schedule_id, last_tick_at from pgflow.schedules where schedule_name = 'roles'"
        ).fetchone() or (None, None)
        # a worker cannot fire a tick again, nor one still to come
        for ticks in ([last], [last + timedelta(days=1)]):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot fire"):
                worker.execute(
                    "select * from pgflow.fire_schedule_ticks(%s, %s, null)", (schedule_id, ticks)
                )
        for denied in (
            "select pgflow.create_schedule('sched_flow', 'w', '* * * * *')",
            "select pgflow.set_schedule_paused('sched_flow', 'roles', true)",
            "select pgflow.remove_schedule('sched_flow', 'roles')",
            "delete from pgflow.schedules",
            "select pgflow._schedule_run_id(gen_random_uuid(), now())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(denied)
    assert set(_runs_per_tick(conn, "roles").values()) == {1}
