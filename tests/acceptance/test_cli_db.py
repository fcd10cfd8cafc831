"""`pgflow db migrate` / `pgflow db status` / `pgflow db prune` and the command's error handling, run as a user would:
the installed command in a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
import psycopg.conninfo
import pytest

import pgflow
from pgflow.db.migrations import load_migrations

Run = Callable[..., subprocess.CompletedProcess[str]]

SECRET = "s3cret-Pa55word"
UNREACHABLE = f"postgresql://someone:{SECRET}@127.0.0.1:1/nowhere"


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one `error: ...` line, no traceback and no password."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    return lines[0]


def test_migrate_then_status(empty_db_dsn: str, run_pgflow: Run) -> None:
    labels = [m.label for m in load_migrations()]

    first = run_pgflow("db", "migrate", "--dsn", empty_db_dsn)
    assert first.returncode == 0, first.stderr
    assert [line for line in first.stdout.splitlines() if line.startswith("applied ")] == [
        f"applied {label}" for label in labels
    ]
    assert "installed pgmq" in first.stdout or "created extension pgmq" in first.stdout

    again = run_pgflow("db", "migrate", "--dsn", empty_db_dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "up to date"
    assert "applied " not in again.stdout

    shown = run_pgflow("db", "status", "--dsn", empty_db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert "(from --dsn)" in shown.stdout
    assert f"migrations:  {len(labels)} applied, 0 pending" in shown.stdout
    for label in labels:
        assert f"  {label} " in shown.stdout
    assert "pgmq:        1." in shown.stdout


def test_status_of_a_fresh_database_lists_pending(empty_db_dsn: str, run_pgflow: Run) -> None:
    shown = run_pgflow("db", "status", "--dsn", empty_db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert "pgmq:        not installed" in shown.stdout
    assert f"0 applied, {len(load_migrations())} pending" in shown.stdout
    assert "pgflow db migrate" in shown.stdout


def test_global_options_work_before_and_after_the_command(db_dsn: str, run_pgflow: Run) -> None:
    before = run_pgflow("--dsn", db_dsn, "db", "status")
    after = run_pgflow("db", "status", "--dsn", db_dsn)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout


def test_dsn_comes_from_pgflow_dsn_before_database_url(db_dsn: str, run_pgflow: Run) -> None:
    shown = run_pgflow("db", "status", env={"PGFLOW_DSN": db_dsn, "DATABASE_URL": UNREACHABLE})
    assert shown.returncode == 0, shown.stderr
    assert "(from PGFLOW_DSN)" in shown.stdout

    fallback = run_pgflow("db", "status", env={"DATABASE_URL": db_dsn})
    assert fallback.returncode == 0, fallback.stderr
    assert "(from DATABASE_URL)" in fallback.stdout


def test_output_never_contains_the_password(db_dsn: str, run_pgflow: Run) -> None:
    with_password = psycopg.conninfo.make_conninfo(db_dsn, password=SECRET)
    shown = run_pgflow("db", "status", "--dsn", with_password)
    if shown.returncode != 0 and "password" in shown.stderr:
        pytest.skip("the test server checks passwords; this check needs trust authentication")
    assert shown.returncode == 0, shown.stderr
    assert SECRET not in shown.stdout + shown.stderr
    assert "password=***" in shown.stdout


def test_unreachable_server_is_one_error_line(run_pgflow: Run) -> None:
    line = assert_one_error_line(run_pgflow("db", "status", "--dsn", UNREACHABLE))
    assert "cannot connect to PostgreSQL at postgresql://someone:***@127.0.0.1:1/nowhere" in line


def test_unreachable_server_from_env_is_one_error_line(run_pgflow: Run) -> None:
    line = assert_one_error_line(run_pgflow("db", "migrate", env={"PGFLOW_DSN": UNREACHABLE}))
    assert "cannot connect" in line


@pytest.mark.parametrize(
    "bad_dsn",
    [
        f"postgresql://someone:{SECRET}%zz@localhost/db",
        f"host=localhost password={SECRET} nonsense",
        f"postgresql://someone:{SECRET}@localhost/db?no_such_option=1",
    ],
)
def test_malformed_dsn_is_one_error_line(bad_dsn: str, run_pgflow: Run) -> None:
    line = assert_one_error_line(run_pgflow("db", "status", "--dsn", bad_dsn))
    assert "invalid PostgreSQL connection string from --dsn" in line


def test_debug_adds_the_traceback_but_not_the_password(run_pgflow: Run) -> None:
    result = run_pgflow("--debug", "db", "status", "--dsn", UNREACHABLE)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "DatabaseUnavailable" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot connect")
    assert SECRET not in result.stderr


def test_usage_errors_exit_2(run_pgflow: Run) -> None:
    assert run_pgflow("db", "no-such-command").returncode == 2
    assert run_pgflow().returncode == 2
    assert run_pgflow("db", "status", "--no-such-option").returncode == 2


def test_version(run_pgflow: Run) -> None:
    result = run_pgflow("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pgflow {pgflow.__version__}"


def test_help_lists_the_db_commands(run_pgflow: Run) -> None:
    result = run_pgflow("db", "--help")
    assert result.returncode == 0
    assert "migrate" in result.stdout
    assert "status" in result.stdout


# -- prune ----------------------------------------------------------------------------------------


def _finished_run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('cli_prune', max_attempts => 1)")
        conn.execute("select pgflow.add_step('cli_prune', 'a')")
        run_id = conn.execute("select run_id from pgflow.start_flow('cli_prune', '{}')").fetchone()[
            0
        ]  # type: ignore[index]
        conn.execute("select pgflow.cancel_run(%s)", (run_id,))


def _run_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("select count(*) from pgflow.runs").fetchone()[0])  # type: ignore[index]


def test_prune_dry_run_counts_then_prune_deletes(db_dsn: str, run_pgflow: Run) -> None:
    _finished_run(db_dsn)
    kept = run_pgflow("db", "prune", "--older-than", "2w", "--dsn", db_dsn)
    assert kept.returncode == 0, kept.stderr
    assert "  runs                      0" in kept.stdout.splitlines()
    assert "(older than 14 day(s))" in kept.stdout

    dry = run_pgflow("db", "prune", "--older-than", "0s", "--dry-run", "--dsn", db_dsn)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "would delete (older than 0 second(s)):"
    assert "  runs                      1" in lines
    assert "  step tasks                1" in lines
    # the task was cancelled while queued: it never had an attempt
    assert "  task attempts             0" in lines
    assert lines[-1] == "dry run: nothing was deleted"
    assert _run_count(db_dsn) == 1

    real = run_pgflow("db", "prune", "--older-than", "0s", "--dsn", db_dsn)
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[0] == "deleted (older than 0 second(s)):"
    assert real.stdout.splitlines()[1:] == lines[1:-1]
    assert _run_count(db_dsn) == 0


@pytest.mark.parametrize("bad", ["7", "7x", "-1d", "1.5h", "d"])
def test_prune_rejects_a_malformed_duration(bad: str, run_pgflow: Run) -> None:
    result = run_pgflow("db", "prune", f"--older-than={bad}", "--dsn", UNREACHABLE)
    assert result.returncode == 2
    assert "expected a duration like 30m, 12h, 7d or 2w" in result.stderr
    assert "Traceback" not in result.stderr


# -- every command on a database that is not migrated ----------------------------------------


UNMIGRATED_COMMANDS = [
    ("start", "some_flow"),
    ("runs", "list"),
    ("runs", "show", "00000000-0000-4000-8000-000000000000"),
    ("cancel", "00000000-0000-4000-8000-000000000000"),
    ("flows", "list"),
    ("flows", "show", "some_flow"),
    ("worker", "pgflow.examples.demo:flow"),
    ("workers",),
]


@pytest.mark.parametrize("command", UNMIGRATED_COMMANDS, ids=" ".join)
def test_every_command_on_an_unmigrated_database_says_to_migrate(
    command: tuple[str, ...], empty_db_dsn: str, run_pgflow: Run
) -> None:
    line = assert_one_error_line(run_pgflow(*command, "--dsn", empty_db_dsn, timeout=60))
    assert "has no pgflow schema: run `pgflow db migrate`" in line
