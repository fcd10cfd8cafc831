"""The dashboard's guard: host names, the token (header, `?token=` then cookie, the live stream
with the cookie), and the actions: off without --allow-actions, and with it refused unless
Origin, Host, JSON and the CSRF token are right, even on 127.0.0.1. Then the actions
themselves: start (input validated as `pgflow start` validates it) and cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dashboard_helpers import serve, site, sse_events
from starlette.testclient import TestClient

from pgflow.client import Client
from pgflow.dashboard import DashboardConfig, create_app
from pgflow.dashboard.security import TOKEN_COOKIE, Security, host_name, same_origin

LOCAL = "http://127.0.0.1:8008"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def defined(db_dsn: str) -> str:
    """The database with flow `dash_site` defined (a run started and left queued)."""
    with Client(db_dsn) as client:
        client.start(site, {"url": "u"})
    return db_dsn


def app_client(dsn: str, **options: Any) -> TestClient:
    return TestClient(create_app(DashboardConfig(dsn=dsn, **options)), base_url=LOCAL)


# -- pure rules ----------------------------------------------------------------------------------


def test_off_loopback_a_token_is_required() -> None:
    with pytest.raises(ValueError, match="requires a token"):
        Security("0.0.0.0", None, False)
    with pytest.raises(ValueError, match="requires a token"):
        Security("192.168.1.5", None, False)
    assert Security("127.0.0.1", None, False).token is None
    assert Security("::1", None, False).token is None


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8008", "127.0.0.1"), ("[::1]:8008", "::1"), ("LocalHost", "localhost")],
)
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:8008", "127.0.0.1:8008")
    assert same_origin("https://dash.example:443", "dash.example:443")
    assert not same_origin("http://127.0.0.1:8009", "127.0.0.1:8008")
    assert not same_origin("http://evil.example", "127.0.0.1:8008")
    assert not same_origin("null", "127.0.0.1:8008")
    assert not same_origin(None, "127.0.0.1:8008")


def test_allowed_hosts() -> None:
    assert Security("127.0.0.1", None, False).host_allowed("localhost:8008")
    assert not Security("127.0.0.1", None, False).host_allowed("evil.example:8008")
    assert Security("10.0.0.5", "t", False).host_allowed("10.0.0.5:8008")
    assert not Security("10.0.0.5", "t", False).host_allowed("evil.example")
    assert Security("0.0.0.0", "t", False).host_allowed("anything.example")
    assert not Security("0.0.0.0", "t", False).host_allowed(None)


# -- over HTTP -----------------------------------------------------------------------------------


def test_another_host_name_is_refused(db_dsn: str) -> None:
    with app_client(db_dsn) as api:
        response = api.get("/api/flows", headers={"host": "rebound.example:8008"})
        assert response.status_code == 421
        assert "does not answer to host 'rebound.example:8008'" in response.json()["error"]
        assert api.get("/api/flows", headers={"host": "localhost:8008"}).status_code == 200


@pytest.fixture
def guarded(db_dsn: str) -> Iterator[TestClient]:
    with app_client(db_dsn, host="0.0.0.0", token=TOKEN) as api:
        yield api


def test_without_the_token_everything_is_refused(guarded: TestClient) -> None:
    for path in ("/", "/api/flows", "/static/app.js", "/api/runs"):
        response = guarded.get(path)
        assert response.status_code == 401, path
        assert "requires its token" in response.json()["error"]
    wrong = guarded.get("/api/flows", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert guarded.get("/api/flows", params={"token": "nope"}).status_code == 401


def test_the_token_as_a_header(guarded: TestClient) -> None:
    response = guarded.get("/api/flows", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert TOKEN_COOKIE not in response.cookies


def test_the_token_in_the_url_once_then_a_cookie(guarded: TestClient) -> None:
    opened = guarded.get("/", params={"token": TOKEN, "x": "1"}, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/?x=1"  # the token leaves the address bar
    cookie = opened.headers["set-cookie"]
    assert f"{TOKEN_COOKIE}={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # the client keeps the cookie: every later request carries it
    assert guarded.get("/").status_code == 200
    assert guarded.get("/api/flows").status_code == 200


def test_the_live_stream_accepts_the_cookie(defined: str) -> None:
    with Client(defined) as client:
        run_id = client.runs()[0].run_id
    with serve(DashboardConfig(dsn=defined, host="0.0.0.0", token=TOKEN)) as url:
        with httpx.Client(base_url=url) as anonymous:
            refused = anonymous.get(f"/api/runs/{run_id}/events")
            assert refused.status_code == 401
        with httpx.Client(base_url=url, cookies={TOKEN_COOKIE: TOKEN}) as browser:
            events = sse_events(browser, f"/api/runs/{run_id}/events", lambda e, d: e == "state")
            assert events[-1][0] == "state" and '"status":"started"' in events[-1][1]


# -- actions -------------------------------------------------------------------------------------


def _post(api: TestClient, path: str, body: Any, **headers: str) -> httpx.Response:
    sent = {"origin": LOCAL, "content-type": "application/json", **headers}
    return api.post(path, content=json.dumps(body), headers=sent)


def test_actions_are_off_without_allow_actions(defined: str) -> None:
    with app_client(defined) as api:
        assert api.get("/api/session").json()["csrf_token"] is None
        response = _post(api, "/api/runs", {"flow": "dash_site", "input": "{}"})
        assert response.status_code == 403
        assert "--allow-actions" in response.json()["error"]
        with Client(defined) as client:
            run_id = client.runs()[0].run_id
            cancel = _post(api, f"/api/runs/{run_id}/cancel", {})
            assert cancel.status_code == 403
            assert client.status(run_id) == "started"


@pytest.fixture
def actions(defined: str) -> Iterator[tuple[TestClient, str]]:
    with app_client(defined, allow_actions=True) as api:
        csrf = api.get("/api/session").json()["csrf_token"]
        assert csrf
        yield api, csrf


@pytest.mark.parametrize(
    ("changed", "says"),
    [
        ({"origin": "http://evil.example"}, "Origin ('http://evil.example') is not this dashboard"),
        ({"origin": "http://127.0.0.1:9999"}, "is not this dashboard"),
        ({"origin": None}, "is not this dashboard"),
        ({"content-type": "text/plain"}, "JSON body"),
        ({"content-type": "application/x-www-form-urlencoded"}, "JSON body"),
        ({"x-csrf-token": "wrong"}, "CSRF token"),
        ({"x-csrf-token": None}, "CSRF token"),
    ],
)
def test_an_action_without_its_proofs_is_refused(
    actions: tuple[TestClient, str], changed: dict[str, str | None], says: str, defined: str
) -> None:
    api, csrf = actions
    headers = {"origin": LOCAL, "content-type": "application/json", "x-csrf-token": csrf}
    for name, value in changed.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    body = '{"flow": "dash_site", "input": "{}"}'
    response = api.post("/api/runs", content=body, headers=headers)
    assert response.status_code == 403
    assert says in response.json()["error"]
    with Client(defined) as client:
        assert len(client.runs()) == 1  # nothing started


def test_an_action_from_another_host_name_is_refused(actions: tuple[TestClient, str]) -> None:
    api, csrf = actions
    response = _post(
        api,
        "/api/runs",
        {"flow": "dash_site", "input": "{}"},
        host="rebound.example:8008",
        origin="http://rebound.example:8008",
        **{"x-csrf-token": csrf},
    )
    assert response.status_code == 421


def test_start_a_run(actions: tuple[TestClient, str], defined: str) -> None:
    api, csrf = actions
    response = _post(
        api,
        "/api/runs",
        {"flow": "dash_site", "input": '{"url": "https://a.example", "pages": 2}'},
        **{"x-csrf-token": csrf},
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    with Client(defined) as client:
        run = client.get(run_id)
    assert run.flow_slug == "dash_site" and run.input == {"url": "https://a.example", "pages": 2}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"flow": "dash_site", "input": "{oops"}, "the input is not valid JSON"),
        ({"flow": "dash_site", "input": {"not": "text"}}, "the run input as JSON text"),
        ({"input": "{}"}, "give the flow to start"),
        ({"flow": "no_such_flow", "input": "{}"}, "no_such_flow"),
        ({"flow": "dash_site", "input": "{}", "run_id": "nope"}, "is not a UUID"),
    ],
)
def test_start_refuses_what_pgflow_start_refuses(
    actions: tuple[TestClient, str], body: dict[str, Any], says: str
) -> None:
    api, csrf = actions
    response = _post(api, "/api/runs", body, **{"x-csrf-token": csrf})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


def test_cancel_a_run(actions: tuple[TestClient, str], defined: str) -> None:
    api, csrf = actions
    with Client(defined) as client:
        run_id = client.runs()[0].run_id
        response = _post(api, f"/api/runs/{run_id}/cancel", {}, **{"x-csrf-token": csrf})
        assert response.status_code == 200, response.text
        assert response.json() == {"run_id": run_id, "status": "cancelled", "cancelled": True}
        assert client.status(run_id) == "cancelled"
        again = _post(api, f"/api/runs/{run_id}/cancel", {}, **{"x-csrf-token": csrf}).json()
        assert again == {"run_id": run_id, "status": "cancelled", "cancelled": False}
    missing = _post(
        api, "/api/runs/00000000-0000-0000-0000-000000000000/cancel", {}, **{"x-csrf-token": csrf}
    )
    assert missing.status_code == 404
