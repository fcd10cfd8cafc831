"""pgflow's own event sinks (PGFLOW_EVENTS_LOG, PGFLOW_EVENTS_JSONL): off unless asked for, and
what they write for events relayed from a real database."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from contract_helpers import Conn, rows
from test_event_relay import FAST, _run_some, events_on  # noqa: F401 (fixture)
from worker_helpers import wait_until

from pgflow import plugins
from pgflow.errors import ConfigError
from pgflow.plugins.events import EventRelay
from pgflow.plugins.sinks import JSONL_ENV, LOG_ENV


@pytest.fixture
def fresh_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    monkeypatch.delenv(LOG_ENV, raising=False)
    monkeypatch.delenv(JSONL_ENV, raising=False)
    plugins.reset_plugin_manager()
    yield monkeypatch
    plugins.reset_plugin_manager()


def test_no_builtin_sink_unless_asked(fresh_manager: pytest.MonkeyPatch) -> None:
    assert not plugins.has_event_sinks()


def test_a_bad_log_flag_or_jsonl_path_is_one_clear_error(
    fresh_manager: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_manager.setenv(LOG_ENV, "maybe")
    with pytest.raises(ConfigError, match=r"PGFLOW_EVENTS_LOG='maybe' is not a yes/no value"):
        plugins.get_plugin_manager()
    fresh_manager.delenv(LOG_ENV)
    plugins.reset_plugin_manager()
    fresh_manager.setenv(JSONL_ENV, str(tmp_path / "missing" / "events.jsonl"))
    with pytest.raises(ConfigError, match=r"cannot open it for appending"):
        plugins.get_plugin_manager()


@pytest.mark.usefixtures("events_on")
def test_the_builtin_sinks_write_every_event(
    conn: Conn,
    db_dsn: str,
    fresh_manager: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jsonl = tmp_path / "events.jsonl"
    fresh_manager.setenv(LOG_ENV, "1")
    fresh_manager.setenv(JSONL_ENV, str(jsonl))
    assert plugins.has_event_sinks()
    _run_some(conn, "sunk", 1)
    kept = rows(conn, "select id, event_type, payload from pgflow.events order by id")
    relay = EventRelay(db_dsn, **FAST)
    with caplog.at_level(logging.INFO, logger="pgflow.events"):
        relay.start()
        try:
            wait_until(
                lambda: jsonl.exists() and len(jsonl.read_text().splitlines()) == len(kept),
                "every event in the JSON lines file",
            )
        finally:
            relay.stop()

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines == [{**row["payload"], "id": row["id"]} for row in kept]

    records = [r for r in caplog.records if "event_type" in r.__dict__]
    assert [r.__dict__["id"] for r in records] == [row["id"] for row in kept]
    first = records[0]
    assert first.levelno == logging.INFO
    assert first.__dict__["event_type"] == "run:started"
    assert first.__dict__["flow_slug"] == "sunk"
    assert first.__dict__["run_id"] == kept[0]["payload"]["run_id"]
    assert first.getMessage() == f"event run:started run={kept[0]['payload']['run_id']}"
    step = next(r for r in records if r.__dict__["event_type"] == "step:completed")
    assert step.getMessage().endswith(" step=a")


def test_pgflow_db_events_on_and_off(
    db_dsn: str, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    def setting() -> str:
        with psycopg.connect(db_dsn) as conn:  # a new session sees the database's setting
            row = conn.execute("select pgflow._events_on()").fetchone()
        return "on" if row and row[0] else "off"

    assert setting() == "off"
    done = run_pgflow("db", "events", "on", "--dsn", db_dsn)
    assert done.returncode == 0, done.stderr
    assert "events are on in database" in done.stdout
    assert setting() == "on"
    done = run_pgflow("db", "events", "off", "--dsn", db_dsn)
    assert done.returncode == 0, done.stderr
    assert setting() == "off"
