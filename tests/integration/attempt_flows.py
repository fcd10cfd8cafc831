"""Flows for the worker tests of attempt records (test_worker_attempts.py).

Lives at module level, importable by "module:attribute", for the process executor's children;
imports nothing from pytest or the tests.
"""

from __future__ import annotations

from typing import Any

from pgflow.context import Context
from pgflow.flow import Flow

# the password a handler's error quotes, which no stored text may contain
SECRET = "hunter2-secret"

flaky = Flow("at_flaky", max_attempts=3, base_delay=0)


def _connect_to_the_warehouse(attempt: int) -> None:
    raise ConnectionError(
        f"attempt {attempt}: could not reach postgresql://loader:{SECRET}@warehouse:5432/dw"
    )


@flaky.step()
def load(value: Any, ctx: Context) -> list[int]:
    if ctx.attempt < 3:
        _connect_to_the_warehouse(ctx.attempt)
    return [1, 2, 3, 4]


@flaky.map(array=load)
def double(item: int) -> int:
    return item * 2
