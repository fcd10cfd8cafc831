"""`pgflow bench` end to end with tiny sizes: every scenario runs, checks its outputs and prints
one JSON object per line with the documented fields. Speed is not judged here (see benches/ and
docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import psycopg
import pytest

FIELDS = {
    "scenario",
    "tasks",
    "runs",
    "seconds",
    "tasks_per_second",
    "runs_per_second",
    "p50_ms",
    "p95_ms",
    "peak_rss_mb",
    "verified",
    "settings",
}
SMALL = [
    *("--map-tasks", "40", "--chain-runs", "1", "--diamond-runs", "8", "--fanout-items", "60"),
    *("--cpu-tasks", "6", "--io-tasks", "20"),
]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--per-task", "--no-rust", "--executor", "asyncio", "--workers", "2"],
        ["--executor", "process"],
        ["--executor", "inline"],
    ],
    ids=["batched-rust", "per-task-fallback-asyncio-2-workers", "process", "inline"],
)
def test_bench_runs_every_scenario_and_verifies_outputs(
    run_pgflow: Callable[..., subprocess.CompletedProcess[str]], db_dsn: str, extra: list[str]
) -> None:
    result = run_pgflow(
        "bench",
        "--dsn",
        db_dsn,
        "--json",
        "--concurrency",
        "8",
        "--batch-size",
        "16",
        *SMALL,
        *extra,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in rows] == ["map", "chain", "diamond", "fanout", "cpu", "io"]
    for row in rows:
        assert set(row) == FIELDS
        assert row["verified"] is True
        assert row["tasks_per_second"] > 0
        assert row["peak_rss_mb"] is None or row["peak_rss_mb"] > 0
    by_name = {r["scenario"]: r for r in rows}
    assert by_name["map"]["tasks"] == 40
    assert by_name["chain"]["tasks"] == 50
    assert by_name["diamond"]["runs"] == 8
    assert by_name["fanout"]["tasks"] == 61
    assert by_name["cpu"]["tasks"] == 6
    assert by_name["io"]["tasks"] == 20
    settings = by_name["map"]["settings"]
    assert settings["per_task"] is ("--per-task" in extra)
    assert settings["rust"] is ("--no-rust" not in extra)
    assert settings["executor"] == (extra[extra.index("--executor") + 1] if extra else "thread")
    assert "outputs verified" in result.stderr


def test_bench_rejects_an_unknown_scenario(
    run_pgflow: Callable[..., subprocess.CompletedProcess[str]], db_dsn: str
) -> None:
    result = run_pgflow("bench", "nope", "--dsn", db_dsn, timeout=120)
    assert result.returncode == 1
    assert "unknown scenario" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--executor", "nope"], "error: unknown executor 'nope'; known executors: "),
        (["nope"], "error: unknown scenario(s) nope; choose from "),
    ],
    ids=["executor", "scenario"],
)
def test_bench_checks_its_settings_before_touching_the_database(
    run_pgflow: Callable[..., subprocess.CompletedProcess[str]],
    empty_db_dsn: str,
    args: list[str],
    said: str,
) -> None:
    result = run_pgflow("bench", "--dsn", empty_db_dsn, *args, timeout=60)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(said), result.stderr
    with psycopg.connect(empty_db_dsn) as conn:
        # not migrated, nothing compiled: the empty database is as it was
        assert conn.execute("select to_regnamespace('pgflow')").fetchone() == (None,)
