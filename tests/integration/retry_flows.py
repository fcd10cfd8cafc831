"""Flows for the tests of failures that are not retried and of tasks cut off by a worker's stop.

Lives at module level, importable by "module:attribute", for the process executor's children;
imports nothing from pytest or the tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from pgflow import Fail
from pgflow.context import Context
from pgflow.flow import Flow

# -- a handler that refuses for good -------------------------------------------------------------

refuse = Flow("rt_refuse", max_attempts=5, base_delay=60)


@refuse.step()
def check(value: Any, ctx: Context) -> int:
    if value.get("ok"):
        return 1
    raise Fail(f"order {value.get('id')} is not payable (attempt {ctx.attempt})")


refuse_skip = Flow("rt_refuse_skip", max_attempts=5, base_delay=60)


@refuse_skip.step(when_exhausted="skip")
def optional(value: Any) -> int:
    raise Fail("nothing to enrich")


@refuse_skip.step()
def main(value: Any) -> str:
    return "done"


# -- a typed root step -------------------------------------------------------------------------


class Payment(msgspec.Struct):
    amount: int
    currency: str


typed_root = Flow("rt_typed_root", max_attempts=5, base_delay=60)


@typed_root.step()
def pay(payment: Payment) -> int:
    return payment.amount


# -- tasks that outlast a worker's grace period -------------------------------------------------

# Long enough that only the stop (not the stalled-task sweep) can bring a task back in a test.
LONG_TIMEOUT = 600

outlast = Flow("rt_outlast", max_attempts=2, base_delay=60, timeout=LONG_TIMEOUT)


@outlast.map()
def hold(item: Any, ctx: Context) -> int:
    """Waits for its gate file (when it has one) on its first attempt only.

    It touches its `running` file first, so a test knows the handler itself has begun: a task's
    `started` status only says it was claimed, and it may still wait in an executor's queue.
    """
    gate = item.get("gate")
    if gate and ctx.attempt == 1:
        if item.get("running"):
            Path(item["running"]).touch()
        deadline = time.monotonic() + 120
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} was never opened")
            time.sleep(0.01)
    return int(item["n"])


forever = Flow("rt_forever", max_attempts=2, base_delay=60, timeout=LONG_TIMEOUT)


@forever.step()
def stuck(value: Any) -> int:
    """Waits for its gate file whatever the attempt: longer than any grace period."""
    gate = Path(value["gate"])
    deadline = time.monotonic() + 120
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.01)
    return 0
