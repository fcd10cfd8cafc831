"""Small pieces of the `pgflow` command that need no database: durations and the status line
shown while one long call runs."""

from __future__ import annotations

import argparse
import io
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from pgflow.cli.db import duration
from pgflow.cli.progress import ticking
from pgflow.cli.runs import ATTEMPTS_LISTED_TASKS, _attempt_lines
from pgflow.client import TaskAttempt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
        (" 0d ", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7x", "-1d", "1.5h", "d", "7 days"])
def test_malformed_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration like 30m"):
        duration(text)


def test_ticking_shows_the_text_while_the_block_runs() -> None:
    stream = io.StringIO()
    seen = threading.Event()
    with ticking("pruning", after=0, stream=stream):
        deadline = time.monotonic() + 10
        while "pruning (" not in stream.getvalue():
            assert time.monotonic() < deadline, "no status line within 10 s"
            seen.wait(0.01)
    assert stream.getvalue().startswith("pruning (0s)")


def test_ticking_says_nothing_for_a_quick_block() -> None:
    stream = io.StringIO()
    with ticking("pruning", after=60, stream=stream):
        pass
    assert stream.getvalue() == ""


def _attempt(index: int, n: int, outcome: str, error: str | None = None) -> TaskAttempt:
    start = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc) + timedelta(seconds=index)
    return TaskAttempt(
        step_slug="each",
        task_index=index,
        attempt=n,
        flow_slug="f",
        worker_id=None if index == 3 else "0123456789abcdef-worker",
        started_at=start,
        ended_at=start + timedelta(milliseconds=250),
        outcome=outcome,
        error_message=error,
        traceback=f"Traceback (most recent call last):\nValueError: {index}" if error else None,
    )


def test_attempt_lines_of_a_big_step_list_only_the_tasks_that_did_not_simply_complete() -> None:
    attempts = [_attempt(i, 1, "completed") for i in range(ATTEMPTS_LISTED_TASKS + 5)]
    attempts[3:4] = [_attempt(3, 1, "failed", "ValueError: 3"), _attempt(3, 2, "completed")]
    lines = _attempt_lines(attempts, tracebacks=False, all_attempts=False)
    assert len(lines) == 3
    assert lines[0].startswith("task 3  attempt 1  failed  ")
    assert lines[0].endswith("  250 ms  worker -: ValueError: 3")
    assert lines[1].startswith("task 3  attempt 2  completed  ")
    assert lines[2] == (
        f"{ATTEMPTS_LISTED_TASKS + 4} more tasks completed at their first attempt "
        "(--all-attempts lists them)"
    )
    everything = _attempt_lines(attempts, tracebacks=True, all_attempts=True)
    assert len(everything) == ATTEMPTS_LISTED_TASKS + 6 + 2  # and the traceback's two lines
    assert everything[4:6] == ["    Traceback (most recent call last):", "    ValueError: 3"]
    assert "worker 01234567" in everything[0]
