"""The whole worker path on pgmq 1.5.1, the version pgflow requires and hosted PostgreSQL
services commonly offer: installed from its SQL file, and installed as an extension.

pgmq 1.5.1's SQL and control file come from the test fixtures beside the project
(`../shared/fixtures/pgmq-1.5.1/`); they are test data, never shipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import worker_flows
from worker_helpers import ALL_MODES, Mode, completed_output, modes, running_worker

from pgflow.client import Client
from pgflow.db.migrations import migrate, status
from pgflow.errors import MigrationError

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "pgmq-1.5.1"
PGMQ_SQL = FIXTURE / "pgmq--1.5.1.sql"
PGMQ_CONTROL = FIXTURE / "pgmq.control"

FLOWS = (
    worker_flows.chain,
    worker_flows.diamond,
    worker_flows.root_map,
    worker_flows.map_over_step,
    worker_flows.retries,
)


@pytest.fixture(scope="module")
def fixture_files() -> Path:
    if not PGMQ_SQL.is_file():
        pytest.fail(f"pgmq 1.5.1 test fixture missing: {PGMQ_SQL}")
    return FIXTURE


@pytest.fixture
def pgmq_151_from_sql(new_database: Callable[[str | None], str], fixture_files: Path) -> str:
    dsn = new_database(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PGMQ_SQL.read_text())
    migrate(dsn)
    return dsn


@pytest.fixture
def pgmq_151_extension(
    new_database: Callable[[str | None], str], pg_admin_dsn: str, fixture_files: Path
) -> Iterator[str]:
    """pgmq 1.5.1 offered by the server as an extension: its files are copied into the server's
    extension directory for the test and removed after."""
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        if admin.execute(
            "select 1 from pg_available_extension_versions where name = 'pgmq'"
        ).fetchone():
            pytest.skip("this server already offers a pgmq extension")
        row = admin.execute("select setting from pg_config where name = 'SHAREDIR'").fetchone()
    assert row is not None
    extension_dir = Path(str(row[0])) / "extension"
    copied = [extension_dir / "pgmq.control", extension_dir / "pgmq--1.5.1.sql"]
    try:
        shutil.copyfile(PGMQ_CONTROL, copied[0])
        shutil.copyfile(PGMQ_SQL, copied[1])
    except PermissionError:
        pytest.skip(f"cannot write the server's extension directory {extension_dir}")
    try:
        dsn = new_database(None)
        migrate(dsn)
        yield dsn
    finally:
        for path in copied:
            path.unlink(missing_ok=True)


def _run_every_flow(dsn: str, mode: Mode) -> None:
    with running_worker(list(FLOWS), dsn, mode) as worker, Client(dsn) as client:
        chain = worker.run_flow(client, worker_flows.chain, {"word": "pgmq"})
        assert completed_output(chain)["third"]["text"] == "pgmq-1-2-3"
        diamond = worker.run_flow(client, worker_flows.diamond, {"n": 3})
        assert completed_output(diamond)
        root_map = worker.run_flow(client, worker_flows.root_map, [1, 2, 3])
        assert completed_output(root_map)
        over_step = worker.run_flow(client, worker_flows.map_over_step, {"numbers": [1, 2]})
        assert completed_output(over_step)
        retried = worker.run_flow(client, worker_flows.retries, {})
        assert retried.status == "completed"


@modes(*ALL_MODES[:1], *ALL_MODES[4:5])
def test_worker_path_on_pgmq_1_5_1_from_sql(pgmq_151_from_sql: str, mode: Mode) -> None:
    state = status(pgmq_151_from_sql)
    assert state.pgmq_installed_as == "sql"
    _run_every_flow(pgmq_151_from_sql, mode)


@modes(*ALL_MODES[:1], *ALL_MODES[4:5])
def test_worker_path_on_pgmq_1_5_1_extension(pgmq_151_extension: str, mode: Mode) -> None:
    state = status(pgmq_151_extension)
    assert (state.pgmq_installed_as, state.pgmq_version) == ("extension", "1.5.1")
    _run_every_flow(pgmq_151_extension, mode)


def test_stalled_task_recovery_on_pgmq_1_5_1(pgmq_151_from_sql: str) -> None:
    """requeue_stalled_tasks and start_tasks use set_vt_batch, whose columns must exist."""
    with psycopg.connect(pgmq_151_from_sql, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('stall151', timeout => 5)")
        conn.execute("select pgflow.add_step('stall151', 'only')")
        worker = conn.execute(
            "select worker_id from pgflow.register_worker(gen_random_uuid(), 'stall151', 't')"
        ).fetchone()
        assert worker is not None
        conn.execute("select pgflow.start_flow('stall151', '{}')")
        ids = [r[0] for r in conn.execute("select msg_id from pgmq.read('stall151', 30, 5)")]
        started = conn.execute(
            "select count(*) from pgflow.start_tasks('stall151', %s, %s)", (ids, worker[0])
        ).fetchone()
        assert started == (1,)
        conn.execute(
            "update pgflow.step_tasks set started_at = now() - interval '1 hour',"
            " queued_at = now() - interval '2 hours'"
        )
        assert conn.execute("select pgflow.requeue_stalled_tasks()").fetchone() == (1,)
        visible = conn.execute(
            "select count(*) from pgmq.q_stall151 where vt <= clock_timestamp()"
        ).fetchone()
        assert visible == (1,)


def test_a_pgmq_older_than_1_5_is_refused_with_what_to_install(
    new_database: Callable[[str | None], str], fixture_files: Path
) -> None:
    dsn = new_database(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # pgmq 1.5.1 with its version recorded as 1.4.4, as a SQL install would say
        conn.execute(PGMQ_SQL.read_text())
        conn.execute("comment on schema pgmq is 'pgmq 1.4.4 (SQL-only build installed by pgflow)'")
    with pytest.raises(MigrationError, match=r"pgmq 1\.4\.4 \(sql\) is too old.*drop schema pgmq"):
        migrate(dsn)
