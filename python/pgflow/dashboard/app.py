"""The dashboard's web application: the page and its assets, the JSON API it calls, the live
stream of a run, and the two actions.

`create_app(config)` returns an ASGI application (Starlette behind the `security.Guard`), which
`pgflow dashboard` serves with uvicorn. Every endpoint is under `/api/`:

    GET  /api/session                       what the page may do (actions, CSRF token, ...)
    GET  /api/flows                         flows: options, runs per status, queue depth,
                                            schedules
    GET  /api/flows/{flow}                  one flow with its steps and their DAG layout
    GET  /api/runs?flow=&status=&q=&after=&limit=
                                            runs, newest first (by id for a prefix `q`), each
                                            with the schedule that started it
    GET  /api/runs/{run}                    a run: schedule, input, output, steps, tasks,
                                            attempts
    GET  /api/runs/{run}/events             its live state (server-sent events)
    GET  /api/runs/{run}/steps/{step}/tasks?after=&status=&limit=
    GET  /api/runs/{run}/input | /output | /steps/{step}/output
         | /steps/{step}/tasks/{i}/output | /steps/{step}/tasks/{i}/attempts/{n}/traceback
                                            a whole value that a page showed cut short
    GET  /api/workers                       workers: live, stopped, presumed dead
    POST /api/runs                          start a run  {"flow": ..., "input": "<JSON text>"}
    POST /api/runs/{run}/cancel             cancel a run

Errors are `{"error": "<what was wrong and what to do>"}` with a 4xx/5xx status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgflow import __version__
from pgflow.client import AsyncClient, _Query
from pgflow.dashboard import queries
from pgflow.dashboard.layout import layout
from pgflow.dashboard.live import Wakeup
from pgflow.dashboard.queries import RunFilter
from pgflow.dashboard.security import ASGIApp, Guard, Security
from pgflow.db.connection import connection_defaults, describe_error
from pgflow.db.dsn import redact
from pgflow.errors import DashboardBadRequest, DashboardNotFound, PgflowError, RunNotFound

logger = logging.getLogger("pgflow.dashboard")

STATIC = Path(__file__).with_name("static")
WORKERS_SHOWN = 500

Pool = AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]]


@dataclass(frozen=True)
class DashboardConfig:
    dsn: str
    host: str = "127.0.0.1"
    token: str | None = None
    allow_actions: bool = False
    pool_size: int = 8


class _PooledClient(AsyncClient):
    """`AsyncClient` (its queries and checks: one place for each) on the dashboard's pool
    rather than one connection under a lock."""

    def __init__(self, dsn: str, pool: Pool) -> None:
        super().__init__(dsn)
        self._pool = pool

    async def _fetch(self, query: _Query) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query.sql, query.params)
            return await cursor.fetchall() if cursor.description else []


@dataclass
class _State:
    pool: Pool
    client: _PooledClient
    wakeup: Wakeup
    events_on: bool


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def create_app(config: DashboardConfig) -> ASGIApp:
    """The dashboard as an ASGI application; it connects to the database when it starts."""
    security = Security(config.host, config.token, config.allow_actions)
    holder: dict[str, _State] = {}

    def state() -> _State:
        return holder["state"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            # plans here are index lookups; JIT only adds its start-up time to them
            await conn.execute("set jit = off")

        pool: Pool = AsyncConnectionPool(
            config.dsn,
            min_size=1,
            max_size=config.pool_size,
            kwargs=connection_defaults(config.dsn, {"autocommit": True, "row_factory": dict_row}),
            configure=configure,
            open=False,
            name="pgflow-dashboard",
        )
        await pool.open(wait=True, timeout=30)
        try:
            client = _PooledClient(config.dsn, pool)
            await client.flows()  # raises SchemaNotMigrated & co. before anything is served
            async with pool.connection() as conn:
                cursor = await conn.execute(queries.EVENTS_ON)
                events_on = bool((await cursor.fetchone() or {}).get("on"))
            wakeup = Wakeup(config.dsn, events_on)
            wakeup.start()
            holder["state"] = _State(pool, client, wakeup, events_on)
            logger.info(
                "dashboard on %s: live updates by %s",
                redact(config.dsn),
                "NOTIFY" if events_on else "polling",
            )
            yield
        finally:
            if "state" in holder:
                await holder.pop("state").wakeup.stop()
            await pool.close()

    # -- endpoints -------------------------------------------------------------------------------

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def session(request: Request) -> Response:
        s = state()
        return _json(
            {
                "version": __version__,
                "actions": config.allow_actions,
                "csrf_token": security.csrf_token if config.allow_actions else None,
                "events_on": s.events_on,
                "live": s.wakeup.mode,
                "database": redact(config.dsn),
            }
        )

    async def flows(request: Request) -> Response:
        async with state().pool.connection() as conn:
            return _json({"flows": await queries.flows(conn)})

    async def flow(request: Request) -> Response:
        slug = request.path_params["flow"]
        async with state().pool.connection() as conn:
            found = await queries.flows(conn, slug)
        if not found:
            raise DashboardNotFound(f"flow {slug!r} does not exist")
        definition = await state().client.flow(slug)
        steps = [dataclasses.asdict(s) for s in definition.steps]
        placed = layout([(s["step_slug"], s["dependencies"]) for s in steps])
        for step in steps:
            step["layer"] = placed[step["step_slug"]].layer
            step["order"] = placed[step["step_slug"]].order
        return _json({**found[0], "steps": steps})

    async def runs(request: Request) -> Response:
        q = request.query_params
        where = RunFilter(
            flow=q.get("flow") or None,
            status=q.get("status") or None,
            prefix=(q.get("q") or "").strip() or None,
        )
        limit = _int_param(q.get("limit"), "limit", 50)
        async with state().pool.connection() as conn:
            return _json(await queries.runs_page(conn, where, q.get("after") or None, limit))

    async def run(request: Request) -> Response:
        run_id = request.path_params["run"]
        s = state()
        async with s.pool.connection() as conn:
            found = await queries.run_detail(conn, run_id)
        placed = layout([(st["step_slug"], st["dependencies"]) for st in found["steps"]])
        for step in found["steps"]:
            step["layer"] = placed[step["step_slug"]].layer
            step["order"] = placed[step["step_slug"]].order
        return _json(found)

    async def tasks(request: Request) -> Response:
        q = request.query_params
        s = state()
        async with s.pool.connection() as conn:
            page = await queries.step_tasks(
                conn,
                request.path_params["run"],
                request.path_params["step"],
                after=_int_param(q.get("after"), "after", -1),
                status=q.get("status") or None,
                limit=_int_param(q.get("limit"), "limit", queries.TASKS_PER_STEP),
            )
        return _json(page)

    def value_endpoint(kind: queries.ValueKind) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            p = request.path_params
            async with state().pool.connection() as conn:
                text = await queries.value(
                    conn, kind, p["run"], p.get("step"), p.get("index"), p.get("attempt")
                )
            media = "text/plain; charset=utf-8" if kind == "traceback" else "application/json"
            return Response("null" if text is None else text, media_type=media)

        return endpoint

    async def live(request: Request) -> Response:
        run_id = request.path_params["run"]
        s = state()
        async with s.pool.connection() as conn:
            if await queries.run_state(conn, run_id) is None:
                raise DashboardNotFound(f"run {run_id} does not exist (or was pruned)")

        async def stream() -> AsyncIterator[bytes]:
            last = b""
            yield b"retry: 2000\n\n"
            while True:
                async with s.pool.connection() as conn:
                    current = await queries.run_state(conn, run_id)
                if current is None:
                    yield b"event: gone\ndata: {}\n\n"
                    return
                current["live"] = s.wakeup.mode
                payload = msgspec.json.encode(current)
                if payload != last:
                    yield b"event: state\ndata: " + payload + b"\n\n"
                    last = payload
                if current["status"] != "started":
                    yield b"event: end\ndata: {}\n\n"
                    return
                await s.wakeup.wait()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def workers(request: Request) -> Response:
        rows = await state().client.workers(limit=WORKERS_SHOWN)
        by_id: dict[str, dict[str, Any]] = {}
        for w in rows:
            entry = by_id.setdefault(
                w.worker_id,
                {
                    "worker_id": w.worker_id,
                    "function_name": w.function_name,
                    "state": w.state,
                    "started_at": w.started_at,
                    "last_heartbeat_at": w.last_heartbeat_at,
                    "heartbeat_age": w.heartbeat_age,
                    "stopped_at": w.stopped_at,
                    "deprecated_at": w.deprecated_at,
                    "flows": [],
                },
            )
            entry["flows"].append(w.flow_slug)
        rank = {"live": 0, "presumed dead": 1, "stopped": 2}
        found = sorted(by_id.values(), key=lambda w: (rank.get(w["state"], 3), w["heartbeat_age"]))
        return _json({"workers": found, "truncated": len(rows) >= WORKERS_SHOWN})

    async def start(request: Request) -> Response:
        body = await _body(request)
        flow_slug = body.get("flow")
        if not isinstance(flow_slug, str) or not flow_slug:
            raise DashboardBadRequest(
                'give the flow to start: {"flow": "<slug>", "input": "<JSON>"}'
            )
        text = body.get("input", "{}")
        if not isinstance(text, str):
            raise DashboardBadRequest('"input" is the run input as JSON text, e.g. "{\\"n\\": 1}"')
        try:
            value = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise DashboardBadRequest(
                f"the input is not valid JSON ({exc.msg} at line {exc.lineno} column "
                f'{exc.colno}); e.g. {{"url": "https://example.org"}}'
            ) from None
        run_id = body.get("run_id") or None
        if run_id is not None and not isinstance(run_id, str):
            raise DashboardBadRequest('"run_id" is a UUID as text, or left out for a new one')
        started = await state().client.start(flow_slug, value, run_id)
        return _json({"run_id": started}, status=201)

    async def cancel(request: Request) -> Response:
        run_id = queries.run_uuid(request.path_params["run"])
        client = state().client
        before = await client.status(run_id)
        status = await client.cancel(run_id) if before == "started" else before
        return _json({"run_id": run_id, "status": status, "cancelled": before == "started"})

    routes = [
        Route("/", index),
        Route("/api/session", session),
        Route("/api/flows", flows),
        Route("/api/flows/{flow}", flow),
        Route("/api/runs", runs, methods=["GET"]),
        Route("/api/runs", start, methods=["POST"]),
        Route("/api/workers", workers),
        Route("/api/runs/{run}", run),
        Route("/api/runs/{run}/cancel", cancel, methods=["POST"]),
        Route("/api/runs/{run}/events", live),
        Route("/api/runs/{run}/input", value_endpoint("input")),
        Route("/api/runs/{run}/output", value_endpoint("output")),
        Route("/api/runs/{run}/steps/{step}/output", value_endpoint("step_output")),
        Route("/api/runs/{run}/steps/{step}/tasks", tasks),
        Route(
            "/api/runs/{run}/steps/{step}/tasks/{index:int}/output", value_endpoint("task_output")
        ),
        Route(
            "/api/runs/{run}/steps/{step}/tasks/{index:int}/attempts/{attempt:int}/traceback",
            value_endpoint("traceback"),
        ),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            DashboardBadRequest: _error(400),
            DashboardNotFound: _error(404),
            RunNotFound: _error(404),
            psycopg.OperationalError: _database_error,
            PgflowError: _error(400),
            404: _not_found,
            405: _not_allowed,
        },
    )
    return Guard(app, security)


def _int_param(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DashboardBadRequest(f"{name} must be a whole number, got {text!r}") from None


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise DashboardBadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise DashboardBadRequest("the request body must be a JSON object")
    return body


def _error(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


async def _database_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": describe_error(exc)}, status_code=503)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such page or endpoint: {request.url.path}"}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": f"{request.method} is not accepted at {request.url.path}"}, status_code=405
    )
