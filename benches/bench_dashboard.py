"""The dashboard's page times with many runs: fills a new database with 100,000 runs (by
default), serves the dashboard in a real uvicorn, and prints p50/p95 of each API call a page
makes, measured over HTTP.

    python benches/bench_dashboard.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
        [--runs 100000] [--requests 60] [--keep]

`--dsn` names a server and a role that may create databases; the bench creates
`pgflow_dash_bench_<hex>`, migrates it, fills it, and drops it at the end (`--keep` keeps it and
prints its DSN). Target: every p95 under 200 ms; the exit status is 1 when one is over.

How the runs are made (`fill`): the flows are defined by `pgflow.create_flow`/`add_step`, as a
worker's compile does; 1 in 200 runs is started by `pgflow.start_flow` (tasks queued, messages
sent: live runs); the others are finished runs written straight into `runs`, `step_states` and
`step_tasks` in the state the SQL functions leave them (completed: every step and task completed
with outputs; failed: the root step and its task failed after 3 attempts, the rest never
started; cancelled: the root step started with its task cancelled), which every table
constraint checks. One in 10 runs of the first flow was started by its schedule `hourly` (run
headers `pgflow-schedule` and `pgflow-scheduled-at`), one in 7 others carries a trace header;
the flow has three schedules (declared in code, at run time, paused). Running 100,000 runs through a worker would take minutes of a shared machine
for rows that end up the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import uvicorn
from psycopg import sql

from pgflow.dashboard import DashboardConfig, create_app
from pgflow.dashboard.queries import _encode_cursor
from pgflow.db.migrations import migrate

TARGET_MS = 200.0
FLOW_A = "dash_bench_site"  # pages -> score (map, 3 tasks) -> publish
FLOW_B = "dash_bench_ping"  # one step
MAP_TASKS = 3

_DEFINE = f"""
select pgflow.create_flow('{FLOW_A}');
select pgflow.add_step('{FLOW_A}', 'pages');
select pgflow.add_step('{FLOW_A}', 'score', array['pages'], step_type => 'map');
select pgflow.add_step('{FLOW_A}', 'publish', array['score']);
select pgflow.create_flow('{FLOW_B}');
select pgflow.add_step('{FLOW_B}', 'ping');
"""

# The finished runs, in one pass per table. g numbers the runs, newest first; every 200th is
# left for start_flow (live runs).
_FILL = f"""
create temp table fill on commit drop as
select g, gen_random_uuid() as run_id,
  case when g %% 4 = 0 then '{FLOW_B}' else '{FLOW_A}' end as flow_slug,
  case when g %% 100 = 1 then 'failed' when g %% 250 = 3 then 'cancelled' else 'completed' end
    as status,
  now() - make_interval(secs => g * 13) as t0
from generate_series(1, %(runs)s) g
where g %% 200 <> 0;

insert into pgflow.runs (run_id, flow_slug, status, input, output, remaining_steps, error_message,
  started_at, completed_at, failed_at, cancelled_at)
select run_id, flow_slug, status, jsonb_build_object('url', 'https://example.org/' || g),
  case when status = 'completed' then jsonb_build_object('total', g) end,
  case when status = 'completed' then 0
       when flow_slug = '{FLOW_A}' then 3 else 1 end,
  case when status = 'failed' then 'ValueError: boom ' || g
       when status = 'cancelled' then 'cancelled' end,
  t0,
  case when status = 'completed' then t0 + interval '2 s' end,
  case when status = 'failed' then t0 + interval '1 s' end,
  case when status = 'cancelled' then t0 + interval '1 s' end
from fill;

-- steps: (flow, step, index, tasks, deps)
create temp table fill_steps on commit drop as
select * from (values
  ('{FLOW_A}', 'pages', 0, 1, 0), ('{FLOW_A}', 'score', 1, {MAP_TASKS}, 1),
  ('{FLOW_A}', 'publish', 2, 1, 1), ('{FLOW_B}', 'ping', 0, 1, 0)
) v(flow_slug, step_slug, step_index, tasks, deps);

insert into pgflow.step_states (flow_slug, run_id, step_slug, status, remaining_tasks,
  initial_tasks, remaining_deps, output, error_message, created_at, started_at, completed_at,
  failed_at)
select f.flow_slug, f.run_id, s.step_slug,
  case when f.status = 'completed' then 'completed'
       when s.step_index > 0 then 'created'
       when f.status = 'failed' then 'failed' else 'started' end,
  case when f.status = 'completed' then 0
       when s.step_index > 0 then null else 1 end,
  case when f.status = 'completed' or s.step_index = 0 then s.tasks end,
  case when f.status = 'completed' then 0 else s.deps end,
  case when f.status = 'completed' and s.step_slug = 'score' then '[21, 21, 21]'::jsonb
       when f.status = 'completed' then jsonb_build_object('step', s.step_slug) end,
  case when f.status = 'failed' and s.step_index = 0 then 'ValueError: boom ' || f.g end,
  f.t0,
  case when f.status = 'completed' or s.step_index = 0
       then f.t0 + make_interval(secs => s.step_index * 0.5) end,
  case when f.status = 'completed'
       then f.t0 + make_interval(secs => s.step_index * 0.5 + 0.4) end,
  case when f.status = 'failed' and s.step_index = 0 then f.t0 + interval '1 s' end
from fill f join fill_steps s on s.flow_slug = f.flow_slug;

insert into pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, status, attempts_count,
  error_message, output, queued_at, started_at, completed_at, failed_at)
select f.flow_slug, f.run_id, s.step_slug, i,
  case when f.status = 'completed' then 'completed'
       when f.status = 'failed' then 'failed' else 'cancelled' end,
  case when f.status = 'failed' then 3 else 1 end,
  case when f.status = 'failed' then 'ValueError: boom ' || f.g end,
  case when f.status = 'completed' then to_jsonb(21 + i) end,
  f.t0 + make_interval(secs => s.step_index * 0.5),
  f.t0 + make_interval(secs => s.step_index * 0.5 + 0.01),
  case when f.status = 'completed'
       then f.t0 + make_interval(secs => s.step_index * 0.5 + 0.4) end,
  case when f.status = 'failed' then f.t0 + interval '1 s' end
from fill f
join fill_steps s on s.flow_slug = f.flow_slug
cross join lateral generate_series(0, s.tasks - 1) i
where f.status = 'completed' or s.step_index = 0;

insert into pgflow.run_headers (run_id, headers)
select run_id,
  case when g %% 10 = 1 then jsonb_build_object('pgflow-schedule', 'hourly',
         'pgflow-scheduled-at', to_char(t0 at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
       else jsonb_build_object('traceparent', '00-' || replace(run_id::text, '-', '')
         || '-00f067aa0ba902b7-01') end
from fill
where (g %% 10 = 1 and flow_slug = '{FLOW_A}') or g %% 7 = 3;
"""

_SCHEDULES = f"""
select pgflow.sync_code_schedules('{FLOW_A}', '[{{"name": "hourly", "cron": "0 * * * *"}},
  {{"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris"}}]');
select pgflow.create_schedule('{FLOW_A}', 'by_hand', '*/15 * * * *', 'UTC', '{{}}', 0);
select pgflow.set_schedule_paused('{FLOW_A}', 'by_hand', true);
update pgflow.schedules s set last_run_id = h.run_id,
  last_tick_at = (h.headers ->> 'pgflow-scheduled-at')::timestamptz
from (select h.run_id, h.headers from pgflow.run_headers h join pgflow.runs r using (run_id)
      where h.headers ->> 'pgflow-schedule' = 'hourly' order by r.started_at desc limit 1) h
where s.flow_slug = '{FLOW_A}' and s.schedule_name = 'hourly';
"""

_LIVE = f"""
select pgflow.start_flow(case when g %% 800 = 0 then '{FLOW_B}' else '{FLOW_A}' end,
  jsonb_build_object('url', 'https://example.org/live/' || g))
from generate_series(200, %(runs)s, 200) g
"""


def fill(dsn: str, runs: int) -> None:
    """Define the bench flows and make `runs` runs (see the module's docstring)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _DEFINE.strip().splitlines():
            conn.execute(statement)
        with conn.transaction():
            conn.execute("set local synchronous_commit = off")
            for statement in _FILL.split(";\n\n"):
                conn.execute(statement, {"runs": runs})  # (every % of _FILL is written %%)
        conn.execute(_LIVE, {"runs": runs})
        for statement in _SCHEDULES.strip().split(";\n"):
            conn.execute(statement)
        for worker in range(20):
            conn.execute(
                "select pgflow.register_worker(%s, %s, %s)",
                (str(uuid.uuid4()), FLOW_A if worker % 2 else FLOW_B, f"bench-host:{worker}"),
            )
        conn.execute("vacuum analyze")


def _measure(call: Callable[[], httpx.Response], requests: int) -> list[float]:
    for _ in range(3):  # warm: the pool's connections, the plans
        call().raise_for_status()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = call()
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return times


def _p(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1]


def bench(dsn: str, requests: int) -> dict[str, tuple[float, float]]:
    """p50 and p95 (ms) of each call, over HTTP against the dashboard in a real uvicorn."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deep = conn.execute(
            "select started_at, run_id::text from pgflow.runs order by started_at desc, run_id "
            "desc offset (select count(*) * 9 / 10 from pgflow.runs) limit 1"
        ).fetchone()
        assert deep is not None
        completed = conn.execute(
            "select run_id::text from pgflow.runs where flow_slug = %s and status = 'completed' "
            "order by started_at desc limit 1",
            (FLOW_A,),
        ).fetchone()
        assert completed is not None
    deep_cursor = _encode_cursor(deep[0].isoformat(), deep[1])
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "runs: first page": ("/api/runs", {}),
        "runs: by flow": ("/api/runs", {"flow": FLOW_A}),
        "runs: by status (failed)": ("/api/runs", {"status": "failed"}),
        "runs: by flow and status": ("/api/runs", {"flow": FLOW_B, "status": "cancelled"}),
        "runs: deep page (90%)": ("/api/runs", {"after": deep_cursor}),
        "runs: id prefix search": ("/api/runs", {"q": completed[0][:3]}),
        "a run": (f"/api/runs/{completed[0]}", {}),
        "flows": ("/api/flows", {}),
        "a flow": (f"/api/flows/{FLOW_A}", {}),
        "workers": ("/api/workers", {}),
    }
    results: dict[str, tuple[float, float]] = {}
    with _served(dsn) as url, httpx.Client(base_url=url) as http:
        for name, (path, params) in calls.items():
            times = _measure(lambda p=path, q=params: http.get(p, params=q), requests)
            results[name] = (_p(times, 50), _p(times, 95))
    return results


class _served:
    def __init__(self, dsn: str) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(DashboardConfig(dsn=dsn)), port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the dashboard did not start")
            threading.Event().wait(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="a server and a role that creates databases")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60, help="requests per call measured")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    name = f"pgflow_dash_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    try:
        migrate(dsn)
        start = time.perf_counter()
        fill(dsn, args.runs)
        print(f"filled {args.runs:,} runs in {time.perf_counter() - start:.1f} s", flush=True)
        results = bench(dsn, args.requests)
    finally:
        if not args.keep:
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )
        else:
            print(f"kept: {dsn}")
    print(f"\n{'call':<28} {'p50 ms':>8} {'p95 ms':>8}")
    slow = []
    for call, (p50, p95) in results.items():
        mark = "" if p95 < TARGET_MS else f"  over {TARGET_MS:g} ms"
        print(f"{call:<28} {p50:>8.1f} {p95:>8.1f}{mark}")
        if p95 >= TARGET_MS:
            slow.append(call)
    print(f"\n{len(results) - len(slow)}/{len(results)} calls under {TARGET_MS:g} ms at p95")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
