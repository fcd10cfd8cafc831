"""Flows and servers for the dashboard's tests (test_dashboard_*.py).

`site` is a flow with every shape the DAG draws: a root step, a map over its output, a step with
a condition, a fan-in; its `publish` step waits for `GATE` when the input says `"wait": true`, so
a test can watch a run while it moves. `broken` fails every attempt of its only step.
`serve(config)` runs the dashboard in a real uvicorn on a free port (the live stream needs a
real server). `fire_now` makes a schedule's latest tick due and fires it, as a worker would,
without waiting for the clock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import pytest
import uvicorn
from worker_helpers import wait_until

from pgflow.context import Context
from pgflow.dashboard import DashboardConfig, create_app
from pgflow.flow import Flow
from pgflow.worker import Worker
from pgflow.worker.schedules import ScheduleFirer

CI_ENV = "PGFLOW_CI"
GATE = threading.Event()

site = Flow("dash_site", max_attempts=2, base_delay=0)


@site.step()
def pages(value: Any, ctx: Context) -> list[str]:
    return [f"{value['url']}/{i}" for i in range(int(value.get("pages", 3)))]


@site.map(array=pages)
def score(page: str, ctx: Context) -> int:
    return len(page)


@site.step(depends_on=[pages], if_={"pages": ["x"]}, when_unmet="skip")
def only_x(deps: Any, ctx: Context) -> str:
    return "x"


@site.step(depends_on=[score, pages])
def publish(deps: Any, ctx: Context) -> dict[str, Any]:
    if not GATE.wait(30):
        raise TimeoutError("the test never opened the gate")
    return {"total": sum(deps["score"]), "pages": len(deps["pages"]), "blob": "y" * 5000}


broken = Flow("dash_broken", max_attempts=2, base_delay=0)


@broken.step()
def explode(value: Any, ctx: Context) -> None:
    raise ValueError(f"boom: {value}")


@contextlib.contextmanager
def worker(dsn: str, *flows: Flow, gated: bool = False) -> Iterator[Worker]:
    """A worker serving `flows` (default: both) in a thread (thread executor), stopped after the
    block. `gated`: `publish` waits until the test sets `GATE`."""
    if gated:
        GATE.clear()
    else:
        GATE.set()
    running = Worker(
        list(flows or (site, broken)),
        dsn=dsn,
        executor="thread",
        concurrency=4,
        poll_interval=0.2,
        shutdown_grace=5.0,
        install_signal_handlers=False,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            running.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="dashboard-test-worker", daemon=True)
    thread.start()
    wait_until(lambda: running.started.is_set() or not thread.is_alive(), "the worker to start")
    assert thread.is_alive(), f"the worker did not start: {errors}"
    try:
        yield running
    finally:
        GATE.set()  # a gated handler must not hold up the stop
        running.stop()
        running.wait_stopped(30)
        thread.join(30)
    assert not errors, errors


def fire_now(conn: psycopg.Connection[Any], flow_slug: str, name: str) -> tuple[datetime, str]:
    """Fire the latest tick of the last 8 days of a schedule that never fired (as if its workers
    had been down since): returns (tick, run id). A worker serving the flow may fire it instead
    (one run per tick either way); `conn` is the database owner's, in autocommit."""
    row = conn.execute(
        "update pgflow.schedules set ticks_from = now() - interval '8 days', next_tick_at = null"
        " where flow_slug = %s and schedule_name = %s and last_tick_at is null"
        " returning schedule_id",
        (flow_slug, name),
    ).fetchone()
    assert row is not None, f"schedule {name} of {flow_slug} does not exist or already fired"
    ScheduleFirer([flow_slug]).fire(conn)
    fired: list[tuple[datetime, str]] = []

    def tick() -> bool:
        found = conn.execute(
            "select last_tick_at, last_run_id::text from pgflow.schedules"
            " where schedule_id = %s and last_run_id is not null",
            (row[0],),
        ).fetchone()
        if found is not None:
            fired.append((found[0], found[1]))
        return found is not None

    wait_until(tick, f"schedule {name} to fire")
    return fired[-1]


def login(conn: psycopg.Connection[Any], db_dsn: str, name: str, *grants: str) -> str:
    """A DSN of `db_dsn` as the login role `name` (created once per server: roles are the
    cluster's), after running each of `grants` (SQL naming the role as {role})."""
    conn.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{name}') "
        f"then create role {name} login; end if; end $$"
    )
    for grant in grants:
        conn.execute(grant.format(role=name))
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    params["user"] = name
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(config: DashboardConfig) -> Iterator[str]:
    """The dashboard in a real uvicorn on 127.0.0.1 and a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the dashboard to start")
    assert server.started, "the dashboard did not start (see the log above)"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def sse_events(
    client: httpx.Client, url: str, until: Callable[[str, str], bool], timeout: float = 30.0
) -> list[tuple[str, str]]:
    """Read the server-sent events at `url` until `until(event, data)` holds (or the stream
    ends); returns every (event, data) read. Fails after `timeout` seconds."""
    seen: list[tuple[str, str]] = []
    event, data = "message", ""
    deadline = time.monotonic() + timeout
    with client.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"no matching event within {timeout:g}s: {seen}"
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                seen.append((event, data))
                if until(event, data):
                    return seen
                event, data = "message", ""
    return seen


def require_chromium() -> str:
    """Debian's chromium; skips without it, except in CI (PGFLOW_CI=1), where it fails."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if found:
        return found
    reason = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get(CI_ENV):
        pytest.fail(f"{reason}, and {CI_ENV} is set: CI must run this test", pytrace=False)
    pytest.skip(reason)
