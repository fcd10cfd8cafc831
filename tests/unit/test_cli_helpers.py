"""Small pieces of the `pgflow` command that need no database: durations and the status line
shown while one long call runs."""

from __future__ import annotations

import argparse
import io
import threading
import time
from datetime import timedelta

import pytest

from pgflow.cli.db import duration
from pgflow.cli.progress import ticking


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
