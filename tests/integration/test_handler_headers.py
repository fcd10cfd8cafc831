"""A handler sees its run's headers (`ctx.headers`) and the schedule tick that started the run
(`ctx.schedule`, `ctx.scheduled_at`), in every executor, batched and per task; the worker fetches
a run's headers once, whichever of its tasks asks, and a worker login may read them."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from test_security import WORKER_LOGIN, _login_dsn
from worker_flows import headers_probe
from worker_helpers import ALL_MODES, Mode, modes, running_worker, statuses, step_of

from pgflow import plugins
from pgflow.client import Client, Run
from pgflow.db.compile import ENSURE_FLOW_COMPILED, compile_params
from pgflow.hooks import hookimpl
from pgflow.worker.schedules import ScheduleFirer

Conn = psycopg.Connection[tuple[Any, ...]]

# the headers the plugin below gives to the runs Client.start starts while it is set
GIVEN: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "GIVEN", default=None
)


class GivenHeaders:
    @hookimpl
    def pgflow_run_headers(self) -> Mapping[str, str] | None:
        return GIVEN.get()


@pytest.fixture
def header_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The builtins and `GivenHeaders` alone (no installed plugin adds headers of its own)."""
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()
    plugins.get_plugin_manager().register(GivenHeaders(), name="given_headers")
    yield
    plugins.reset_plugin_manager()


def fire_one_tick(conn: Conn, client: Client, name: str) -> tuple[str, datetime]:
    """Start a run of `headers_probe` from a tick of schedule `name`, the way a worker fires
    one, without waiting for a real minute: the schedule is made due and fired here, then paused
    so that no worker fires another. Returns the run id and the tick."""
    conn.execute(ENSURE_FLOW_COMPILED, compile_params(headers_probe.slug, headers_probe.shape()))
    client.add_schedule(headers_probe.slug, name, "* * * * *", {"from": "tick"})
    conn.execute(
        "update pgflow.schedules set ticks_from = date_trunc('minute', now()) - interval "
        "'2 minutes', next_tick_at = date_trunc('minute', now()) - interval '1 minute' "
        "where schedule_name = %s",
        (name,),
    )
    fired = ScheduleFirer([headers_probe.slug]).fire(conn).fired
    client.pause_schedule(headers_probe.slug, name)
    assert len(fired) == 1, fired
    _, fired_name, tick, run_id = fired[0]
    assert fired_name == name
    return run_id, tick


def seen_by_every_task(run: Run) -> list[dict[str, Any]]:
    """What each of the run's five tasks saw (the root's three copies count as one)."""
    assert statuses(run) == {"spread": "completed", "each_sees": "completed", "gather": "completed"}
    root = step_of(run, "spread").output
    assert root[0] == root[1] == root[2]
    return [root[0], *step_of(run, "each_sees").output, step_of(run, "gather").output]


@modes(*ALL_MODES)
def test_handlers_see_the_headers_and_tick_of_their_run_fetched_once_per_run(
    conn: Conn, db_dsn: str, mode: Mode, header_plugin: None
) -> None:
    with Client(db_dsn) as client:
        plain = client.start(headers_probe, {})
        token = GIVEN.set({"tenant": "acme", "traceparent": "00-abc-def-01"})
        try:
            given = client.start(headers_probe, {})
        finally:
            GIVEN.reset(token)
        ticked, tick = fire_one_tick(conn, client, "every_minute")
        with running_worker([headers_probe], db_dsn, mode) as running:
            runs = {run_id: running.finish(client, run_id) for run_id in (plain, given, ticked)}
            fetched = running.worker.stats.run_headers_fetched

    # a run started with no headers: {} and no tick, in every task
    for seen in seen_by_every_task(runs[plain]):
        assert seen == {"headers": {}, "schedule": None, "scheduled_at": None, "same": True}
    # headers the pgflow_run_headers hook gave Client.start
    for seen in seen_by_every_task(runs[given]):
        assert seen == {
            "headers": {"tenant": "acme", "traceparent": "00-abc-def-01"},
            "schedule": None,
            "scheduled_at": None,
            "same": True,
        }
    # the tick: its schedule and instant (aware, in UTC), the same the client reads
    assert tick.tzinfo is not None
    tick_text = f"{tick.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}"
    for seen in seen_by_every_task(runs[ticked]):
        assert seen == {
            "headers": {"pgflow-schedule": "every_minute", "pgflow-scheduled-at": tick_text},
            "schedule": "every_minute",
            "scheduled_at": tick.astimezone(timezone.utc).isoformat(),
            "same": True,
        }
    assert runs[ticked].schedule == "every_minute" and runs[ticked].scheduled_at == tick
    assert runs[ticked].input == {"from": "tick"}  # the input is the schedule's own, untouched
    # five tasks per run read the headers, the worker asked the database once per run
    assert fetched == 3


def test_a_worker_login_reads_the_headers_of_its_runs(conn: Conn, db_dsn: str) -> None:
    """The worker's fetch needs nothing more than the pgflow_worker role."""
    with Client(db_dsn) as client:
        run_id, tick = fire_one_tick(conn, client, "as_worker")
    worker_dsn = _login_dsn(conn, db_dsn, WORKER_LOGIN, "pgflow_worker")
    with running_worker([headers_probe], worker_dsn, Mode("thread")) as running:
        with Client(db_dsn) as client:
            run = running.finish(client, run_id)
        assert running.worker.stats.run_headers_fetched == 1
    assert {seen["schedule"] for seen in seen_by_every_task(run)} == {"as_worker"}
    assert {seen["scheduled_at"] for seen in seen_by_every_task(run)} == {
        tick.astimezone(timezone.utc).isoformat()
    }


def test_a_header_that_holds_no_instant_is_no_tick_for_the_client(conn: Conn, db_dsn: str) -> None:
    """Anyone who may start a run may set `pgflow-scheduled-at`: text shaped like an instant
    that is none (month 13) reads as no tick, and lists of runs do not fail for it."""
    with Client(db_dsn) as client:
        client.start(headers_probe, {})  # compiles the flow
        row = conn.execute(
            "select run_id::text from pgflow.start_flow_with_headers(%s, '{}', %s)",
            (
                headers_probe.slug,
                Jsonb({"pgflow-schedule": "forged", "pgflow-scheduled-at": "2025-13-01T00:00Z"}),
            ),
        ).fetchone()
        assert row is not None
        run = client.get(row[0])
        assert (run.schedule, run.scheduled_at) == ("forged", None)
        listed = {r.run_id: r for r in client.runs(headers_probe.slug)}
        assert listed[row[0]].scheduled_at is None
