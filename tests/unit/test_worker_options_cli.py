"""`pgflow worker`'s flags and `WorkerOptions` agree: what `cli_args()` writes (the bench starts
worker processes with it) parses back to the same options, switches included."""

from __future__ import annotations

import argparse

import pytest

from pgflow.cli.worker import add_worker_options, options_from
from pgflow.worker.options import CLI_FLAGS, WorkerOptions


def _parsed(args: list[str]) -> WorkerOptions:
    parser = argparse.ArgumentParser()
    add_worker_options(parser, WorkerOptions())
    return options_from(parser.parse_args(args), WorkerOptions())


@pytest.mark.parametrize(
    "options",
    [
        WorkerOptions(),
        WorkerOptions(schedules=False),
        WorkerOptions(per_task=True, allow_data_loss=True, schedules=False),
        WorkerOptions(executor="process", concurrency=4, prefetch=0, shutdown_grace=2.5),
    ],
)
def test_cli_args_parse_back_to_the_same_options(options: WorkerOptions) -> None:
    assert _parsed(options.cli_args()) == options


def test_no_schedules_turns_schedules_off_and_its_absence_leaves_them_on() -> None:
    assert CLI_FLAGS["schedules"] == "--no-schedules"
    assert _parsed([]).schedules is True
    assert _parsed(["--no-schedules"]).schedules is False
    assert WorkerOptions(schedules=False).cli_args() == ["--no-schedules"]
