"""The dashboard's JSON API, endpoint by endpoint, over HTTP (Starlette's TestClient, the app's
lifespan included) against a real migrated database, with runs that a real worker ran."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from dashboard_helpers import broken, fire_now, login, site, wait_until, worker
from starlette.testclient import TestClient

from pgflow.client import Client
from pgflow.dashboard import DashboardConfig, create_app
from pgflow.dashboard.queries import PREVIEW_CHARS, TASKS_PER_STEP
from pgflow.db.prune import prune

BASE = "http://127.0.0.1:8008"

Conn = psycopg.Connection[Any]


@pytest.fixture
def api(db_dsn: str) -> Iterator[TestClient]:
    with TestClient(create_app(DashboardConfig(dsn=db_dsn)), base_url=BASE) as client:
        yield client


def finished(client: Client, run_id: str) -> None:
    wait_until(lambda: client.status(run_id) != "started", f"run {run_id} to finish")


@pytest.fixture
def ran(db_dsn: str) -> dict[str, str]:
    """A completed run of `site` (3 pages) and a failed run of `broken`."""
    with Client(db_dsn) as client, worker(db_dsn):
        done = client.start(site, {"url": "https://example.org", "pages": 3})
        failed = client.start(broken, {"why": "test"})
        finished(client, done)
        finished(client, failed)
    return {"done": done, "failed": failed}


def test_session_says_what_the_page_may_do(api: TestClient) -> None:
    session = api.get("/api/session").json()
    assert session["actions"] is False and session["csrf_token"] is None
    assert session["live"] == "poll" and session["events_on"] is False


def test_the_page_and_its_assets_are_served(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    for asset in ("app.js", "api.js", "dag.js", "dom.js", "run.js", "runs.js", "app.css"):
        response = api.get(f"/static/{asset}")
        assert response.status_code == 200, asset
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert api.get("/static/nothing.js").status_code == 404


def test_flows_list_options_runs_per_status_and_queue(
    api: TestClient, ran: dict[str, str], conn: Conn
) -> None:
    with Client(conn.info.dsn) as client:
        client.start(site, {"url": "u"})  # queued: no worker runs now
    flows = {f["flow_slug"]: f for f in api.get("/api/flows").json()["flows"]}
    assert set(flows) == {"dash_site", "dash_broken"}
    s = flows["dash_site"]
    assert (s["max_attempts"], s["base_delay"], s["timeout"], s["step_count"]) == (2, 0, 60, 4)
    assert s["runs"] == {"started": 1, "completed": 1, "failed": 0, "cancelled": 0}
    assert flows["dash_broken"]["runs"]["failed"] == 1
    assert s["queue_readable"] is True and s["queue"]["messages"] == 1


def test_flow_detail_has_steps_conditions_and_a_layout(
    api: TestClient, ran: dict[str, str]
) -> None:
    flow = api.get("/api/flows/dash_site").json()
    steps = {s["step_slug"]: s for s in flow["steps"]}
    assert steps["score"]["step_type"] == "map"
    assert steps["only_x"]["required_input_pattern"] == {"pages": ["x"]}
    assert steps["only_x"]["when_unmet"] == "skip"
    assert sorted(steps["publish"]["dependencies"]) == ["pages", "score"]
    assert {s: (v["layer"], v["order"]) for s, v in steps.items()} == {
        "pages": (0, 0),
        "score": (1, 0),
        "only_x": (1, 1),
        "publish": (2, 0),
    }
    missing = api.get("/api/flows/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def _start_many(conn: Conn, flow: str, count: int) -> list[str]:
    """`count` runs started in one transaction: they share started_at, so only run_id orders
    them (what keyset pagination must get right)."""
    with conn.transaction():
        rows = conn.execute(
            "select (pgflow.start_flow(%s, '{}'::jsonb)).run_id::text from generate_series(1, %s)",
            (flow, count),
        ).fetchall()
    return [r[0] for r in rows]


def _define(conn: Conn, slug: str) -> None:
    conn.execute("select pgflow.create_flow(%s)", (slug,))
    conn.execute("select pgflow.add_step(%s, 'only')", (slug,))


def test_runs_pages_cover_every_run_once_newest_first(api: TestClient, conn: Conn) -> None:
    _define(conn, "pa")
    _define(conn, "pb")
    older = _start_many(conn, "pa", 7)
    newer = _start_many(conn, "pb", 6) + _start_many(conn, "pa", 5)
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = api.get("/api/runs", params={"limit": 4, **({"after": after} if after else {})})
        assert page.status_code == 200, page.text
        seen += page.json()["runs"]
        after = page.json()["next"]
        if after is None:
            break
    ids = [r["run_id"] for r in seen]
    assert sorted(ids) == sorted(older + newer) and len(ids) == len(set(ids))
    times = [r["started_at"] for r in seen]
    assert times == sorted(times, reverse=True)
    # the newest transaction's runs come before the older one's
    assert set(ids[:11]) == set(newer) and set(ids[11:]) == set(older)


def test_runs_filtered_by_flow_and_status(api: TestClient, conn: Conn) -> None:
    _define(conn, "pa")
    _define(conn, "pb")
    a = _start_many(conn, "pa", 3)
    b = _start_many(conn, "pb", 2)
    conn.execute("select pgflow.cancel_run(%s)", (a[0],))
    by_flow = api.get("/api/runs", params={"flow": "pb"}).json()["runs"]
    assert sorted(r["run_id"] for r in by_flow) == sorted(b)
    cancelled = api.get("/api/runs", params={"flow": "pa", "status": "cancelled"}).json()["runs"]
    assert [r["run_id"] for r in cancelled] == [a[0]]
    started = api.get("/api/runs", params={"status": "started"}).json()["runs"]
    assert len(started) == 4
    paged = api.get("/api/runs", params={"flow": "pa", "status": "started", "limit": 1}).json()
    second = api.get(
        "/api/runs", params={"flow": "pa", "status": "started", "after": paged["next"]}
    ).json()
    assert {paged["runs"][0]["run_id"], second["runs"][0]["run_id"]} == set(a[1:])
    assert second["next"] is None


def test_runs_searched_by_id_prefix(api: TestClient, conn: Conn) -> None:
    _define(conn, "pa")
    ids = _start_many(conn, "pa", 30)
    target = ids[7]
    found = api.get("/api/runs", params={"q": target[:13]}).json()["runs"]
    assert [r["run_id"] for r in found] == [target]
    by_digit = api.get("/api/runs", params={"q": target[0], "limit": 200}).json()["runs"]
    assert target in [r["run_id"] for r in by_digit]
    assert all(r["run_id"].startswith(target[0]) for r in by_digit)
    assert api.get("/api/runs", params={"q": "zz"}).status_code == 400


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "done"}, "unknown run status 'done'"),
        ({"limit": "0"}, "limit must be between 1 and 200"),
        ({"limit": "many"}, "limit must be a whole number"),
        ({"after": "garbage"}, "page cursor 'garbage' is not one this dashboard made"),
    ],
)
def test_runs_refuses_bad_parameters(api: TestClient, params: dict[str, str], says: str) -> None:
    response = api.get("/api/runs", params=params)
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_a_run_with_steps_tasks_and_values(api: TestClient, ran: dict[str, str]) -> None:
    run = api.get(f"/api/runs/{ran['done']}").json()
    assert run["status"] == "completed" and run["flow_slug"] == "dash_site"
    assert run["input"] == {
        "text": '{"url": "https://example.org", "pages": 3}',
        "size": 42,
        "truncated": False,
    }
    steps = {s["step_slug"]: s for s in run["steps"]}
    assert [s["step_slug"] for s in run["steps"]] == ["pages", "score", "only_x", "publish"]
    assert steps["only_x"]["status"] == "skipped"
    assert steps["only_x"]["skip_reason"] == "condition_unmet"
    assert steps["score"]["task_counts"] == {"completed": 3} and steps["score"]["tasks_total"] == 3
    assert [t["task_index"] for t in steps["score"]["tasks"]] == [0, 1, 2]
    task = steps["score"]["tasks"][0]
    assert task["status"] == "completed" and task["attempts_count"] == 1
    assert task["output"]["text"] == str(len("https://example.org/0"))
    assert task["worker"] and task["started_at"] and task["completed_at"]
    (attempt,) = task["attempts"]  # written by the worker's report
    assert attempt["outcome"] == "completed" and attempt["worker_id"] is not None
    # a large output is cut short, and its whole value is one request away
    out = run["output"]
    assert out["truncated"] is True and len(out["text"]) == PREVIEW_CHARS
    whole = api.get(f"/api/runs/{ran['done']}/output")
    assert whole.json()["publish"]["blob"] == "y" * 5000
    assert len(whole.text) == out["size"]
    step_out = api.get(f"/api/runs/{ran['done']}/steps/pages/output").json()
    assert step_out == [f"https://example.org/{i}" for i in range(3)]
    assert api.get(f"/api/runs/{ran['done']}/steps/score/tasks/2/output").json() == len(
        "https://example.org/2"
    )
    assert api.get(f"/api/runs/{ran['done']}/input").json()["pages"] == 3
    assert api.get(f"/api/runs/{ran['done']}/steps/only_x/output").text == "null"


def test_a_failed_run_shows_its_error_and_every_attempt_with_its_traceback(
    api: TestClient, ran: dict[str, str]
) -> None:
    run = api.get(f"/api/runs/{ran['failed']}").json()
    assert run["status"] == "failed"
    (step,) = run["steps"]
    (task,) = step["tasks"]
    assert task["status"] == "failed" and task["attempts_count"] == 2
    assert task["error_message"].startswith("ValueError: boom:")
    # recorded by the worker's reports: one per attempt, each with the handler's traceback
    assert [(a["attempt"], a["outcome"]) for a in task["attempts"]] == [
        (1, "failed"),
        (2, "failed"),
    ]
    for attempt in task["attempts"]:
        assert attempt["error_message"].startswith("ValueError: boom:")
        assert attempt["worker_id"] is not None
        whole = api.get(
            f"/api/runs/{ran['failed']}/steps/explode/tasks/0/attempts/{attempt['attempt']}"
            "/traceback"
        )
        assert whole.status_code == 200 and whole.text.startswith("Traceback")
        assert "ValueError: boom" in whole.text


def test_a_long_traceback_is_cut_short_then_shown_whole(
    db_dsn: str, ran: dict[str, str], conn: Conn
) -> None:
    long_trace = "Traceback (most recent call last):\n" + "  frame\n" * 1000 + "ValueError: boom"
    # as a caller of fail_task other than the worker (which bounds it to 16 KiB) could store
    conn.execute(
        "update pgflow.task_attempts set traceback = %(t)s"
        " where run_id = %(r)s and step_slug = 'explode' and task_index = 0 and attempt = 2",
        {"r": ran["failed"], "t": long_trace},
    )
    with TestClient(create_app(DashboardConfig(dsn=db_dsn)), base_url=BASE) as api:
        run = api.get(f"/api/runs/{ran['failed']}").json()
        (task,) = run["steps"][0]["tasks"]
        attempts = {a["attempt"]: a for a in task["attempts"]}
        assert attempts[1]["outcome"] == "failed"
        assert attempts[1]["traceback"]["truncated"] is False
        second = attempts[2]["traceback"]
        assert second["truncated"] is True and second["size"] == len(long_trace)
        whole = api.get(f"/api/runs/{ran['failed']}/steps/explode/tasks/0/attempts/2/traceback")
        assert whole.status_code == 200 and whole.text == long_trace
        assert whole.headers["content-type"].startswith("text/plain")
        gone = api.get(f"/api/runs/{ran['failed']}/steps/explode/tasks/0/attempts/9/traceback")
        assert gone.status_code == 404
        # a completed run's tasks show their one completed attempt, with no traceback
        done = api.get(f"/api/runs/{ran['done']}").json()
        (first,) = done["steps"][0]["tasks"][0]["attempts"]
        assert first["outcome"] == "completed" and first["traceback"] is None


def test_a_map_steps_tasks_page_by_page(db_dsn: str, api: TestClient) -> None:
    count = TASKS_PER_STEP + 25
    with Client(db_dsn) as client, worker(db_dsn, site):
        run_id = client.start(site, {"url": "u", "pages": count})
        finished(client, run_id)
    run = api.get(f"/api/runs/{run_id}").json()
    score = next(s for s in run["steps"] if s["step_slug"] == "score")
    assert len(score["tasks"]) == TASKS_PER_STEP and score["tasks_total"] == count
    after = score["tasks"][-1]["task_index"]
    rest = api.get(f"/api/runs/{run_id}/steps/score/tasks", params={"after": after}).json()
    assert [t["task_index"] for t in rest["tasks"]] == list(range(TASKS_PER_STEP, count))
    assert rest["next"] is None
    page = api.get(f"/api/runs/{run_id}/steps/score/tasks", params={"limit": 10}).json()
    assert page["next"] == 9
    failed = api.get(f"/api/runs/{run_id}/steps/score/tasks", params={"status": "failed"})
    assert failed.json() == {"tasks": [], "next": None}


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_run_is_404(api: TestClient, run_id: str) -> None:
    for path in ("", "/input", "/events", "/steps/a/tasks/0/output"):
        response = api.get(f"/api/runs/{run_id}{path}")
        assert response.status_code == 404, (path, response.text)
        assert "error" in response.json()


def test_workers_live_stopped_and_presumed_dead(api: TestClient, conn: Conn) -> None:
    _define(conn, "pa")
    _define(conn, "pb")
    live, stopped, dead = (str(uuid.uuid4()) for _ in range(3))
    for worker_id, flow in ((live, "pa"), (stopped, "pb"), (dead, "pa")):
        conn.execute("select pgflow.register_worker(%s, %s, 'host:1')", (worker_id, flow))
    conn.execute("select pgflow.mark_worker_stopped(%s)", (stopped,))
    conn.execute(
        "update pgflow.workers set last_heartbeat_at = now() - interval '1 hour'"
        " where worker_id = %s",
        (dead,),
    )
    workers = api.get("/api/workers").json()["workers"]
    states = {w["worker_id"]: w["state"] for w in workers}
    assert states == {live: "live", stopped: "stopped", dead: "presumed dead"}
    assert [w["worker_id"] for w in workers] == [live, dead, stopped]
    by_id = {w["worker_id"]: w for w in workers}
    assert [by_id[w]["flows"] for w in (live, stopped, dead)] == [["pa"], ["pb"], ["pa"]]
    assert by_id[live]["function_name"] == "host:1"
    assert by_id[dead]["heartbeat_age"] > 3000 and by_id[live]["heartbeat_age"] < 60


def test_an_unknown_endpoint_says_so(api: TestClient) -> None:
    response = api.get("/api/nothing")
    assert response.status_code == 404
    assert "no such page or endpoint: /api/nothing" in response.json()["error"]


def test_a_database_that_is_not_migrated_is_refused_at_start(empty_db_dsn: str) -> None:
    from pgflow.errors import MigrationError

    with (
        pytest.raises(MigrationError, match="pgflow db migrate"),
        TestClient(create_app(DashboardConfig(dsn=empty_db_dsn)), base_url=BASE),
    ):
        pass


# -- schedules (docs/schedules.md) ----------------------------------------------------------------


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_runs_say_which_schedule_started_them(api: TestClient, conn: Conn, db_dsn: str) -> None:
    _define(conn, "pa")
    with Client(db_dsn) as client:
        client.add_schedule("pa", "nightly", "0 3 * * *", {"n": 1}, timezone="Europe/Paris")
    tick, scheduled = fire_now(conn, "pa", "nightly")
    (plain,) = _start_many(conn, "pa", 1)
    row = conn.execute(
        "select run_id::text from pgflow.start_flow_with_headers('pa', '{}', %s)",
        ('{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',),
    ).fetchone()
    assert row is not None
    traced = row[0]

    listed = {r["run_id"]: r for r in api.get("/api/runs").json()["runs"]}
    assert listed.keys() == {scheduled, plain, traced}
    assert listed[scheduled]["schedule"] == "nightly"
    assert _iso(listed[scheduled]["scheduled_at"]) == tick
    assert tick.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    for other in (plain, traced):  # no headers, or headers of another kind
        assert (listed[other]["schedule"], listed[other]["scheduled_at"]) == (None, None)
    # the same in every list: by flow, by status, by run id prefix
    for params in ({"flow": "pa"}, {"status": "started"}, {"q": scheduled[:8]}):
        runs = {r["run_id"]: r for r in api.get("/api/runs", params=params).json()["runs"]}
        assert runs[scheduled]["schedule"] == "nightly", params

    run = api.get(f"/api/runs/{scheduled}").json()
    assert run["schedule"] == "nightly" and _iso(run["scheduled_at"]) == tick
    assert run["input"]["text"] == '{"n": 1}'
    other = api.get(f"/api/runs/{traced}").json()
    assert (other["schedule"], other["scheduled_at"]) == (None, None)


@pytest.mark.parametrize("tick", ["yesterday", "2025-02-31T03:00:00.000000Z", "2025-03-01"])
def test_a_tick_header_that_is_not_an_instant_is_left_out(
    api: TestClient, conn: Conn, db_dsn: str, tick: str
) -> None:
    """Anyone who may start runs may set the headers: one that is not an instant (even one that
    looks like it, and would fail a cast in SQL) leaves the tick out, and every list works."""
    _define(conn, "pa")
    row = conn.execute(
        "select run_id::text from pgflow.start_flow_with_headers('pa', '{}', %s)",
        (json.dumps({"pgflow-schedule": "by_hand", "pgflow-scheduled-at": tick}),),
    ).fetchone()
    assert row is not None
    (listed,) = api.get("/api/runs").json()["runs"]
    assert (listed["schedule"], listed["scheduled_at"]) == ("by_hand", None)
    run = api.get(f"/api/runs/{row[0]}").json()
    assert (run["schedule"], run["scheduled_at"]) == ("by_hand", None)
    with Client(db_dsn) as client:  # and `pgflow runs list`, which reads runs the same way
        (found,) = client.runs()
        assert (found.schedule, found.scheduled_at) == ("by_hand", None)
        assert client.get(row[0]).scheduled_at is None


def test_flows_show_their_schedules(api: TestClient, conn: Conn, db_dsn: str) -> None:
    for slug in ("pa", "pb", "pc"):
        _define(conn, slug)
    declared = [
        {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris", "input": {}},
        {"name": "gone", "cron": "*/5 * * * *"},
    ]
    # a worker's reconciliation, then a redeploy whose code no longer declares "gone"
    conn.execute("select pgflow.sync_code_schedules('pa', %s)", (json.dumps(declared),))
    conn.execute("select pgflow.sync_code_schedules('pa', %s)", (json.dumps(declared[:1]),))
    with Client(db_dsn) as client:
        client.add_schedule("pa", "hourly", "0 * * * *", catch_up=2)
        client.pause_schedule("pa", "hourly")
        client.add_schedule("pa", "fresh", "*/10 * * * *")
        client.add_schedule("pb", "pruned", "0 0 * * *")
    tick, run_id = fire_now(conn, "pa", "nightly")
    _, gone_run = fire_now(conn, "pb", "pruned")
    conn.execute("select pgflow.cancel_run(%s)", (gone_run,))
    assert prune(db_dsn, timedelta(0)).runs == 1

    flows = {f["flow_slug"]: f for f in api.get("/api/flows").json()["flows"]}
    assert flows["pc"]["schedules"] == []
    pa = {s["name"]: s for s in flows["pa"]["schedules"]}
    assert list(pa) == ["fresh", "gone", "hourly", "nightly"]  # by name
    assert {n: (s["origin"], s["state"]) for n, s in pa.items()} == {
        "fresh": ("runtime", "active"),
        "gone": ("code", "removed from code"),
        "hourly": ("runtime", "paused"),
        "nightly": ("code", "active"),
    }
    nightly = pa["nightly"]
    assert (nightly["cron"], nightly["timezone"], nightly["catch_up"]) == (
        "0 3 * * *",
        "Europe/Paris",
        0,
    )
    assert _iso(nightly["last_tick_at"]) == tick
    assert nightly["last_run_id"] == run_id and nightly["last_run_status"] == "started"
    next_tick = _iso(nightly["next_tick_at"])
    assert next_tick > tick and next_tick.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    # never fired: its next tick is computed from the cron, as `pgflow schedules list` does
    assert pa["fresh"]["next_tick_at"] is not None and pa["fresh"]["last_run_id"] is None
    assert _iso(pa["fresh"]["next_tick_at"]).minute % 10 == 0
    # paused or disabled: no next tick
    assert pa["hourly"]["next_tick_at"] is None and pa["hourly"]["catch_up"] == 2
    assert pa["gone"]["next_tick_at"] is None and pa["gone"]["removed_from_code_at"]
    assert "input" not in nightly
    # the last run was pruned: the schedule still names it, without a status
    (pruned,) = flows["pb"]["schedules"]
    assert pruned["last_run_id"] == gone_run and pruned["last_run_status"] is None

    one = api.get("/api/flows/pa").json()
    assert one["schedules"] == flows["pa"]["schedules"]
    assert api.get("/api/flows/pc").json()["schedules"] == []


def test_schedules_as_pgflow_client_and_as_a_role_that_may_not_read_them(
    conn: Conn, db_dsn: str
) -> None:
    _define(conn, "pa")
    with Client(db_dsn) as client:
        client.add_schedule("pa", "hourly", "0 * * * *")
    as_client = login(conn, db_dsn, "pgflow_dash_client", "grant pgflow_client to {role}")
    with TestClient(create_app(DashboardConfig(dsn=as_client)), base_url=BASE) as api:
        (flow,) = api.get("/api/flows").json()["flows"]
        assert [s["name"] for s in flow["schedules"]] == ["hourly"]
        assert flow["queue_readable"] is False  # pgmq's tables: not pgflow_client's
    # a role given pgflow's tables one by one, without the schedules
    reader = login(
        conn,
        db_dsn,
        "pgflow_dash_reader",
        "grant usage on schema pgflow to {role}",
        "grant select on all tables in schema pgflow to {role}",
        "revoke select on pgflow.schedules from {role}",
    )
    with TestClient(create_app(DashboardConfig(dsn=reader)), base_url=BASE) as api:
        (flow,) = api.get("/api/flows").json()["flows"]
        assert flow["schedules"] is None and flow["runs"]["started"] == 0
        one = api.get("/api/flows/pa")
        assert one.status_code == 200 and one.json()["schedules"] is None
