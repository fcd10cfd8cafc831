"""`pgflow bench`: end-to-end throughput and latency on the configured database.

Each scenario wipes its benchmark flow, starts `--workers` worker processes (the real `pgflow
worker` command), waits until they have registered, starts its runs, waits for them to finish,
checks every output, stops the workers and reads their peak memory. Times come from the
database's own timestamps, so polling does not blur them.

Scenarios:
- map: one run of a root map over N no-op tasks (default 10,000); tasks per second.
- chain: runs of 50 sequential steps; the latency of one hop (step i done -> step i+1 done).
- diamond: 1,000 runs of a -> (b, c) -> d, all started at once; runs per second.
- fanout: one step producing N items (default 100,000) mapped by a second step; worker memory.
- cpu: one run of a root map over N tasks (default 1,000) that each burn ~5 ms of pure-Python
  CPU; tasks per second (the thread executor is held to one core by the GIL).
- io: one run of a root map over N tasks (default 2,000) that each wait ~50 ms (time.sleep, or
  asyncio.sleep on the asyncio executor); seconds against the ideal N x 50 ms / concurrency.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgflow.bench.flows import CHAIN_LENGTH, flow_ref
from pgflow.db.compile import ENSURE_FLOW_COMPILED, check_compiled, compile_params
from pgflow.db.connection import connect
from pgflow.errors import BenchError
from pgflow.flow import load_flow
from pgflow.plugins.manager import executor_factory
from pgflow.worker.options import WorkerOptions

SCENARIOS = ("map", "chain", "diamond", "fanout", "cpu", "io")

Progress = Callable[[str], None]


def _bench_worker() -> WorkerOptions:
    # many handlers in flight and big batches: the bench measures the engine, not a small pool
    return WorkerOptions(concurrency=500, batch_size=500)


@dataclass
class BenchSettings:
    workers: int = 1
    worker: WorkerOptions = field(default_factory=_bench_worker)
    no_rust: bool = False
    map_tasks: int = 10_000
    chain_runs: int = 5
    diamond_runs: int = 1_000
    fanout_items: int = 100_000
    cpu_tasks: int = 1_000
    io_tasks: int = 2_000
    timeout: float = 600.0


@dataclass
class BenchResult:
    scenario: str
    tasks: int
    runs: int
    seconds: float
    tasks_per_second: float
    runs_per_second: float
    p50_ms: float | None
    p95_ms: float | None
    peak_rss_mb: float | None
    verified: bool
    settings: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def check_settings(scenarios: Sequence[str], settings: BenchSettings) -> None:
    """Refuse unknown scenarios and executors before anything is compiled or started."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise BenchError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    executor_factory(settings.worker.executor)


def run_benchmarks(
    dsn: str, scenarios: Sequence[str], settings: BenchSettings, progress: Progress
) -> list[BenchResult]:
    check_settings(scenarios, settings)
    results = []
    for name in scenarios or SCENARIOS:
        results.append(_run_scenario(dsn, name, settings, progress))
    return results


def _run_scenario(dsn: str, name: str, settings: BenchSettings, progress: Progress) -> BenchResult:
    ref = flow_ref(name, settings.worker.executor)
    flow = load_flow(ref)
    with connect(dsn, autocommit=True) as conn:
        _reset_flow(conn, flow.slug, flow.shape())
        workers = _Workers(dsn, ref, settings)
        try:
            workers.wait_registered(conn, flow.slug)
            wait = _Waiter(conn, settings, progress, workers)
            if name == "map":
                result = _bench_root_map(conn, name, flow.slug, "item", settings.map_tasks, wait)
            elif name == "chain":
                result = _bench_chain(conn, settings, wait)
            elif name == "diamond":
                result = _bench_diamond(conn, settings, wait)
            elif name == "cpu":
                result = _bench_root_map(conn, name, flow.slug, "burn", settings.cpu_tasks, wait)
            elif name == "io":
                result = _bench_root_map(conn, name, flow.slug, "wait", settings.io_tasks, wait)
            else:
                result = _bench_fanout(conn, settings, wait)
        finally:
            peak = workers.stop()
        _reset_flow(conn, flow.slug, None)
    result.peak_rss_mb = peak
    result.settings = {
        "workers": settings.workers,
        "executor": settings.worker.executor,
        "concurrency": settings.worker.concurrency,
        "batch_size": settings.worker.claim_size,
        "per_task": settings.worker.per_task,
        "rust": not settings.no_rust,
    }
    return result


# -- workers ------------------------------------------------------------------------------------


class _Workers:
    """The `pgflow worker` processes of one scenario. What they write to stderr is kept, so
    that a worker that exits (or never starts) fails the benchmark at once with its own words
    instead of a timeout minutes later."""

    def __init__(self, dsn: str, flow_ref: str, settings: BenchSettings) -> None:
        env = dict(os.environ)
        env["PGFLOW_DSN"] = dsn
        if settings.no_rust:
            env["PGFLOW_NO_RUST"] = "1"
        else:
            env.pop("PGFLOW_NO_RUST", None)
        command = [
            sys.executable,
            "-m",
            "pgflow",
            "worker",
            flow_ref,
            *settings.worker.cli_args(),
            "--quiet",
        ]
        # closed in stop()
        self.stderr = [tempfile.TemporaryFile() for _ in range(settings.workers)]  # noqa: SIM115
        self.processes = [
            subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
            for err in self.stderr
        ]

    def check(self) -> None:
        """Raise `BenchError` with the worker's last words when one has exited."""
        for process, err in zip(self.processes, self.stderr, strict=True):
            code = process.poll()
            if code is None:
                continue
            err.seek(0)
            lines = [line.strip() for line in err.read().decode(errors="replace").splitlines()]
            said = [line for line in lines if line.startswith("error:")] or lines
            last = said[-1] if said else "(it printed nothing)"
            raise BenchError(f"a worker process exited with code {code}: {last}")

    def wait_registered(self, conn: psycopg.Connection[Any], flow_slug: str) -> None:
        deadline = time.monotonic() + 60
        pids = {str(w.pid) for w in self.processes}
        while True:
            rows = conn.execute(
                "select function_name from pgflow.workers where queue_name = %s"
                " and stopped_at is null",
                (flow_slug,),
            ).fetchall()
            seen = {str(r[0]).rsplit(":", 1)[-1] for r in rows}
            if pids <= seen:
                return
            self.check()
            if time.monotonic() > deadline:
                raise BenchError("the worker processes did not register within 60 s")
            time.sleep(0.05)

    def stop(self) -> float | None:
        """Stop the workers (SIGTERM, then SIGKILL after 30 s); their highest peak RSS."""
        peaks = [_peak_rss_mb(w.pid) for w in self.processes]
        for w in self.processes:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.processes:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        for err in self.stderr:
            err.close()
        known = [p for p in peaks if p is not None]
        return max(known) if known else None


def _peak_rss_mb(pid: int) -> float | None:
    """The process's high-water mark of resident memory (Linux: VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# -- scenarios ----------------------------------------------------------------------------------


def _reset_flow(conn: psycopg.Connection[Any], slug: str, shape: dict[str, Any] | None) -> None:
    conn.execute("select pgflow.delete_flow_and_data(%s)", (slug,))
    if shape is not None:
        row = conn.execute(ENSURE_FLOW_COMPILED, compile_params(slug, shape)).fetchone()
        check_compiled(slug, row[0] if row else None)


def _db_now(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute("select clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


@dataclass
class _Waiter:
    """Waits for a scenario's runs, showing progress against the scenario's totals, and fails
    fast when a worker exits."""

    conn: psycopg.Connection[Any]
    settings: BenchSettings
    progress: Progress
    workers: _Workers

    def runs(
        self, flow_slug: str, runs: int, label: str, *, total: tuple[int, int], done: int = 0
    ) -> None:
        """Wait until `runs` runs of the flow have finished. `total` is (runs, tasks) of the
        whole scenario, `done` the runs finished before this wait (the chain waits run by run)."""
        conn, settings = self.conn, self.settings
        deadline = time.monotonic() + settings.timeout
        started = time.monotonic()
        last_report = 0.0
        while True:
            row = conn.execute(
                "select count(*) filter (where status <> 'started'), "
                "count(*) filter (where status in ('failed', 'cancelled')) "
                "from pgflow.runs where flow_slug = %s",
                (flow_slug,),
            ).fetchone()
            assert row is not None
            finished, failed = row
            if failed:
                raise BenchError(
                    f"{label}: {failed} run(s) failed; see `pgflow runs list --status failed`"
                )
            if finished >= runs:
                self.progress("")
                return
            self.workers.check()
            now = time.monotonic()
            if now - last_report >= 0.5:
                last_report = now
                tasks_row = conn.execute(
                    "select count(*) from pgflow.step_tasks"
                    " where flow_slug = %s and status = 'completed'",
                    (flow_slug,),
                ).fetchone()
                done_tasks = tasks_row[0] if tasks_row else 0
                rate = done_tasks / max(now - started, 1e-9)
                self.progress(
                    f"{label}: {max(finished, done)}/{total[0]} runs, {done_tasks}/{total[1]} "
                    f"tasks, {rate:,.0f} tasks/s, {now - started:.1f}s"
                )
            if now > deadline:
                raise BenchError(f"{label}: not finished after {settings.timeout:g}s")
            time.sleep(0.01 if total[1] < 1000 else 0.05)


def _task_latencies_ms(conn: psycopg.Connection[Any], run_id: Any, step_slug: str) -> list[float]:
    """Queued-to-completed time of each task of one step of a run."""
    return [
        float(r[0])
        for r in conn.execute(
            "select extract(epoch from completed_at - queued_at) * 1000 from pgflow.step_tasks "
            "where run_id = %s and step_slug = %s",
            (run_id, step_slug),
        )
    ]


def _percentiles(values_ms: list[float]) -> tuple[float | None, float | None]:
    if not values_ms:
        return None, None
    values = sorted(values_ms)
    if len(values) == 1:
        return round(values[0], 2), round(values[0], 2)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return round(q[49], 2), round(q[94], 2)


def _result(
    scenario: str, tasks: int, runs: int, seconds: float, latencies_ms: list[float]
) -> BenchResult:
    p50, p95 = _percentiles(latencies_ms)
    seconds = max(seconds, 1e-9)
    return BenchResult(
        scenario=scenario,
        tasks=tasks,
        runs=runs,
        seconds=round(seconds, 3),
        tasks_per_second=round(tasks / seconds, 1),
        runs_per_second=round(runs / seconds, 2),
        p50_ms=p50,
        p95_ms=p95,
        peak_rss_mb=None,
        verified=True,
    )


def _bench_root_map(
    conn: psycopg.Connection[Any],
    name: str,
    flow_slug: str,
    step_slug: str,
    n: int,
    wait: _Waiter,
) -> BenchResult:
    """One run of a root map over `n` tasks whose handlers return their item (map, cpu, io)."""
    items = list(range(n))
    row = conn.execute(
        "select run_id from pgflow.start_flow(%s, %s)", (flow_slug, Jsonb(items))
    ).fetchone()
    assert row is not None
    run_id = row[0]
    wait.runs(flow_slug, 1, name, total=(1, n))
    out = conn.execute(
        "select output, extract(epoch from completed_at - started_at) from pgflow.runs "
        "where run_id = %s",
        (run_id,),
    ).fetchone()
    assert out is not None
    if out[0] != {step_slug: items}:
        raise BenchError(f"{name}: the run's output is not the mapped input")
    return _result(name, n, 1, float(out[1]), _task_latencies_ms(conn, run_id, step_slug))


def _bench_chain(
    conn: psycopg.Connection[Any], settings: BenchSettings, wait: _Waiter
) -> BenchResult:
    hops: list[float] = []
    total = 0.0
    for i in range(settings.chain_runs):
        row = conn.execute("select run_id from pgflow.start_flow('bench_chain', '{}')").fetchone()
        assert row is not None
        run_id = row[0]
        wait.runs(
            "bench_chain",
            i + 1,
            "chain",
            total=(settings.chain_runs, settings.chain_runs * CHAIN_LENGTH),
            done=i,
        )
        out = conn.execute(
            "select output, extract(epoch from completed_at - started_at) from pgflow.runs "
            "where run_id = %s",
            (run_id,),
        ).fetchone()
        assert out is not None
        if out[0] != {f"s{CHAIN_LENGTH - 1}": CHAIN_LENGTH - 1}:
            raise BenchError(f"chain: wrong output {out[0]!r}")
        total += float(out[1])
        done = [
            r[0]
            for r in conn.execute(
                "select completed_at from pgflow.step_states where run_id = %s order by completed_at",
                (run_id,),
            )
        ]
        hops.extend((b - a).total_seconds() * 1000 for a, b in itertools.pairwise(done))
    return _result("chain", settings.chain_runs * CHAIN_LENGTH, settings.chain_runs, total, hops)


def _bench_diamond(
    conn: psycopg.Connection[Any], settings: BenchSettings, wait: _Waiter
) -> BenchResult:
    n = settings.diamond_runs
    with conn.transaction():
        conn.execute(
            "select pgflow.start_flow('bench_diamond', jsonb_build_object('n', i)) "
            "from generate_series(1, %s) i",
            (n,),
        )
    t0 = _db_now(conn)
    wait.runs("bench_diamond", n, "diamond", total=(n, n * 4))
    rows = conn.execute(
        "select input, output, extract(epoch from completed_at - %s) * 1000 from pgflow.runs "
        "where flow_slug = 'bench_diamond'",
        (t0,),
    ).fetchall()
    for inp, out, _ in rows:
        k = inp["n"]
        if out != {"d": (k + 1) + 2 * k}:
            raise BenchError(f"diamond: run with n={k} produced {out!r}")
    lat = [float(r[2]) for r in rows]
    return _result("diamond", n * 4, n, max(lat) / 1000, lat)


def _bench_fanout(
    conn: psycopg.Connection[Any], settings: BenchSettings, wait: _Waiter
) -> BenchResult:
    n = settings.fanout_items
    row = conn.execute(
        "select run_id from pgflow.start_flow('bench_fanout', %s)", (Jsonb({"n": n}),)
    ).fetchone()
    assert row is not None
    run_id = row[0]
    wait.runs("bench_fanout", 1, "fanout", total=(1, n + 1))
    out = conn.execute(
        "select (output->'double') = (select jsonb_agg(i * 2 order by i) from generate_series(0, %s - 1) i), "
        "jsonb_array_length(output->'double'), extract(epoch from completed_at - started_at) "
        "from pgflow.runs where run_id = %s",
        (n, run_id),
    ).fetchone()
    assert out is not None
    if not out[0]:
        raise BenchError(f"fanout: the output has {out[1]} items, not the {n} doubled inputs")
    return _result("fanout", n + 1, 1, float(out[2]), _task_latencies_ms(conn, run_id, "double"))


def format_table(results: Sequence[BenchResult]) -> str:
    header = f"{'scenario':<9} {'tasks':>8} {'runs':>6} {'seconds':>8} {'tasks/s':>9} {'runs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'rss MB':>7}  ok"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.scenario:<9} {r.tasks:>8} {r.runs:>6} {r.seconds:>8.3f} {r.tasks_per_second:>9,.0f} "
            f"{r.runs_per_second:>8,.1f} {_fmt(r.p50_ms):>8} {_fmt(r.p95_ms):>8} {_fmt(r.peak_rss_mb):>7}  "
            f"{'yes' if r.verified else 'NO'}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
