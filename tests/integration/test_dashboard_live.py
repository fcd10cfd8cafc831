"""A run page's live stream: the run's state as server-sent events, sent again whenever it
changes, until the run ends; woken by the database's NOTIFY when events are on, by polling when
they are off. A real worker moves the run; the test opens the gate that holds its last step."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from dashboard_helpers import GATE, serve, site, sse_events, worker

from pgflow.client import Client
from pgflow.dashboard import DashboardConfig
from pgflow.db.events import set_events


def _steps(data: str) -> dict[str, str]:
    return {s["step_slug"]: s["status"] for s in json.loads(data)["steps"]}


@pytest.mark.parametrize("events", ["on", "off"])
def test_the_stream_follows_a_run_to_its_end(db_dsn: str, events: str) -> None:
    if events == "on":
        set_events(db_dsn, True)  # sessions opened from now on keep events and NOTIFY
    with (
        Client(db_dsn) as client,
        worker(db_dsn, site, gated=True),
        serve(DashboardConfig(dsn=db_dsn)) as url,
        httpx.Client(base_url=url) as http,
    ):
        assert http.get("/api/session").json()["live"] == ("notify" if events == "on" else "poll")
        run_id = client.start(site, {"url": "u", "pages": 4})

        def moving(event: str, data: str) -> bool:
            # every task of the map done, the gated step started: open the gate
            if event == "state" and _steps(data).get("publish") == "started":
                GATE.set()
            return event == "end"

        seen = sse_events(http, f"/api/runs/{run_id}/events", moving)
    states = [json.loads(d) for e, d in seen if e == "state"]
    assert seen[-1][0] == "end"
    assert states[-1]["status"] == "completed"
    assert set(_steps(seen[-2][1]).values()) <= {"completed", "skipped"}
    # it went through the gated step while the run was still moving: more than one state
    assert any(s["status"] == "started" for s in states)
    assert len(states) >= 2
    assert {s["live"] for s in states} == {"notify" if events == "on" else "poll"}
    # each state differs from the one before: nothing is sent twice
    assert all(a != b for a, b in itertools.pairwise(states))


def test_the_stream_of_a_finished_run_sends_its_state_and_ends(db_dsn: str) -> None:
    with Client(db_dsn) as client:
        run_id = client.start(site, {"url": "u"})
        client.cancel(run_id)
    with serve(DashboardConfig(dsn=db_dsn)) as url, httpx.Client(base_url=url) as http:
        seen = sse_events(http, f"/api/runs/{run_id}/events", lambda e, d: False)
    assert [e for e, _ in seen] == ["state", "end"]
    assert json.loads(seen[0][1])["status"] == "cancelled"
