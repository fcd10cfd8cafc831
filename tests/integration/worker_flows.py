"""Flows served by the worker scenario tests (tests/integration/test_worker_scenarios.py).

The process executor imports a flow in its child processes by "module:attribute", so every flow
lives at module level here, and this module imports nothing from pytest or the tests. Handlers
depend only on their input and context (no shared state), so they behave the same in a thread, a
child process or an event loop. Flow slugs start with `wt_` to tell them apart in a database.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from pgflow.context import Context
from pgflow.flow import Flow, Mode

# -- a sequential chain --------------------------------------------------------------------------

chain = Flow("wt_chain")


@chain.step()
def first(value: Any) -> str:
    # No ctx parameter on purpose: handlers may take the input alone.
    return f"{value['word']}-1"


@chain.step(depends_on=[first])
def second(deps: Any, ctx: Context) -> str:
    return f"{deps['first']}-2"


@chain.step(depends_on=[second])
def third(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"text": f"{deps['second']}-3", "saw": sorted(deps)}


# -- a diamond -----------------------------------------------------------------------------------

diamond = Flow("wt_diamond")


@diamond.step()
def top(value: Any, ctx: Context) -> int:
    return int(value["n"])


@diamond.step(depends_on=[top])
def left(deps: Any, ctx: Context) -> int:
    return int(deps["top"]) + 1


@diamond.step(depends_on=[top])
def right(deps: Any, ctx: Context) -> int:
    return int(deps["top"]) * 10


@diamond.step(depends_on=[left, right])
def bottom(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"sum": deps["left"] + deps["right"], "deps": deps}


# -- a map over the run input --------------------------------------------------------------------

root_map = Flow("wt_root_map")


@root_map.map()
def double(item: Any, ctx: Context) -> dict[str, int]:
    return {"index": ctx.task_index, "doubled": item * 2}


@root_map.step(depends_on=[double])
def collect(deps: Any, ctx: Context) -> list[int]:
    return [entry["doubled"] for entry in deps["double"]]


# -- a map over a step's output (its producer may also return a non-array) -----------------------

map_over_step = Flow("wt_map_over_step")


@map_over_step.step()
def numbers(value: Any, ctx: Context) -> Any:
    # Whatever the run input says, array or not: the type violation test relies on that.
    return value["numbers"]


@map_over_step.map(array=numbers)
def square(item: Any, ctx: Context) -> int:
    return int(item) * int(item)


@map_over_step.step(depends_on=[square])
def total(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"squares": deps["square"], "total": sum(deps["square"])}


# -- a map of a map, then a single step ----------------------------------------------------------

nested_maps = Flow("wt_nested_maps", max_attempts=1)


@nested_maps.map()
def outer(item: Any, ctx: Context) -> int:
    return int(item) + 1


@nested_maps.map(array=outer)
def inner(item: Any, ctx: Context) -> int:
    return int(item) * 2


@nested_maps.step(depends_on=[inner])
def after_maps(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"inner": deps["inner"], "count": len(deps["inner"])}


# -- conditions ----------------------------------------------------------------------------------

conditions = Flow("wt_conditions")


@conditions.step()
def check(value: Any, ctx: Context) -> dict[str, Any]:
    return {"healthy": value["healthy"]}


@conditions.step(depends_on=[check], if_={"check": {"healthy": True}}, when_unmet="skip")
def deploy(deps: Any, ctx: Context) -> str:
    return "deployed"


@conditions.step(depends_on=[deploy])
def announce(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"saw": sorted(deps)}


@conditions.step(if_not={"quiet": True}, when_unmet="skip-cascade")
def notify(value: Any, ctx: Context) -> str:
    return "notified"


@conditions.step(depends_on=[notify])
def notify_log(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"saw": sorted(deps)}


strict_gate = Flow("wt_strict_gate")


@strict_gate.step()
def probe(value: Any, ctx: Context) -> dict[str, Any]:
    return {"allowed": value["allowed"]}


@strict_gate.step(depends_on=[probe], if_={"probe": {"allowed": True}}, when_unmet="fail")
def guarded(deps: Any, ctx: Context) -> str:
    return "ran"


# -- retries -------------------------------------------------------------------------------------

retries = Flow("wt_retries", max_attempts=3, base_delay=0)


@retries.step()
def flaky(value: Any, ctx: Context) -> list[int]:
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return [ctx.attempt, ctx.attempt + 1]


@retries.map(array=flaky)
def wobbly(item: Any, ctx: Context) -> dict[str, int]:
    # Odd elements fail their first attempt only.
    if ctx.attempt == 1 and item % 2 == 1:
        raise RuntimeError(f"item {item} wobbled")
    return {"item": item, "attempt": ctx.attempt}


# -- exhausted attempts, one flow per when_exhausted mode ----------------------------------------


def _exhausting(slug: str, mode: Mode) -> Flow:
    flow = Flow(slug, max_attempts=2, base_delay=0)

    @flow.step(when_exhausted=mode)
    def doomed(value: Any, ctx: Context) -> None:
        raise ValueError(f"bad value {value['n']} on attempt {ctx.attempt}")

    @flow.step(depends_on=[doomed])
    def downstream(deps: Any, ctx: Context) -> dict[str, Any]:
        return {"saw": sorted(deps)}

    @flow.step()
    def bystander(value: Any, ctx: Context) -> str:
        return "fine"

    return flow


exhaust_fail = _exhausting("wt_exhaust_fail", "fail")
exhaust_skip = _exhausting("wt_exhaust_skip", "skip")
exhaust_skip_cascade = _exhausting("wt_exhaust_skip_cascade", "skip-cascade")


# -- typed inputs and outputs --------------------------------------------------------------------


class Order(msgspec.Struct):
    sku: str
    quantity: int


class Receipt(msgspec.Struct):
    sku: str
    total_cents: int


typed = Flow("wt_typed", max_attempts=1)


@typed.step()
def price(order: Order, ctx: Context) -> Receipt:
    # Fails loudly if the worker passed the raw dict instead of building an Order.
    assert isinstance(order, Order), f"expected an Order, got {type(order).__name__}"
    return Receipt(sku=order.sku, total_cents=order.quantity * 250)


@typed.step(depends_on=[price])
def confirm(deps: Any, ctx: Context) -> dict[str, Any]:
    return {"receipt": deps["price"]}


# -- async handlers ------------------------------------------------------------------------------

async_flow = Flow("wt_async")


@async_flow.step()
async def fetch(value: Any, ctx: Context) -> list[Any]:
    await asyncio.sleep(0)
    return list(value["items"])


@async_flow.map(array=fetch)
async def enrich(item: Any, ctx: Context) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"item": item, "index": ctx.task_index, "thread": threading.current_thread().name}


@async_flow.step(depends_on=[enrich])
def summarize(deps: Any, ctx: Context) -> dict[str, Any]:
    return {
        "items": [entry["item"] for entry in deps["enrich"]],
        "indexes": [entry["index"] for entry in deps["enrich"]],
        "async_threads": sorted({entry["thread"] for entry in deps["enrich"]}),
        "sync_thread": threading.current_thread().name,
    }


# -- outputs with no JSON form -------------------------------------------------------------------


class Opaque:
    """A plain object: picklable (so it can leave a child process) but with no JSON form."""


bad_output = Flow("wt_bad_output", max_attempts=1)


@bad_output.step()
def produce(value: Any, ctx: Context) -> Any:
    kind = value["kind"]
    if kind == "nan":
        return {"score": float("nan")}
    if kind == "object":
        return {"thing": Opaque()}
    if kind == "function":
        return {"callback": lambda: None}
    if kind == "set":
        return {"tags": {"only"}}
    return {"ok": kind}


# -- the handler's context -----------------------------------------------------------------------

ctx_probe = Flow("wt_ctx_probe")


def _ctx_fields(ctx: Context) -> dict[str, Any]:
    return {
        "run_id": ctx.run_id,
        "flow_slug": ctx.flow_slug,
        "step_slug": ctx.step_slug,
        "task_index": ctx.task_index,
        "attempt": ctx.attempt,
    }


@ctx_probe.step()
def origin(value: Any, ctx: Context) -> dict[str, Any]:
    return {**_ctx_fields(ctx), "value": value, "flow_input": ctx.flow_input}


@ctx_probe.step()
def letters(value: Any, ctx: Context) -> list[str]:
    return list(value["letters"])


@ctx_probe.map(array=letters)
def visit(item: Any, ctx: Context) -> dict[str, Any]:
    return {**_ctx_fields(ctx), "item": item, "flow_input": ctx.flow_input}


@ctx_probe.step(depends_on=[visit])
def report(deps: Any, ctx: Context) -> dict[str, Any]:
    return {**_ctx_fields(ctx), "flow_input": ctx.flow_input, "visits": deps["visit"]}


# -- the run's headers and the schedule tick that started it ---------------------------------------

headers_probe = Flow("wt_headers_probe")


def _headers_seen(ctx: Context) -> dict[str, Any]:
    scheduled_at = ctx.scheduled_at
    return {
        "headers": dict(ctx.headers),
        "schedule": ctx.schedule,
        "scheduled_at": None if scheduled_at is None else scheduled_at.isoformat(),
        # read again: the context keeps what it fetched
        "same": ctx.headers is ctx.headers,
    }


@headers_probe.step()
def spread(value: Any, ctx: Context) -> list[dict[str, Any]]:
    return [_headers_seen(ctx)] * 3


@headers_probe.map(array=spread)
async def each_sees(item: Any, ctx: Context) -> dict[str, Any]:
    return _headers_seen(ctx)


@headers_probe.step(depends_on=[each_sees])
def gather(deps: Any, ctx: Context) -> dict[str, Any]:
    return _headers_seen(ctx)


# -- timeouts ------------------------------------------------------------------------------------

slow = Flow("wt_slow", max_attempts=1)


@slow.step(timeout=1)
def dawdle(value: Any, ctx: Context) -> str:
    Path(value["pid_file"]).write_text(str(os.getpid()))
    # Three times the timeout, either asleep or, as docs/flows.md suggests for long handlers,
    # waiting on the shutdown signal.
    if value.get("wait_on_shutdown"):
        ctx.shutdown.wait(3)
    else:
        time.sleep(3)
    return "finished"


slow_async = Flow("wt_slow_async", max_attempts=1)


@slow_async.step(timeout=1)
async def linger(value: Any, ctx: Context) -> str:
    marker = Path(value["marker"])
    try:
        await asyncio.sleep(3)
    except asyncio.CancelledError:
        marker.write_text("cancelled")
        raise
    marker.write_text("finished")
    return "finished"


quick = Flow("wt_quick")


@quick.step()
def ping(value: Any, ctx: Context) -> dict[str, Any]:
    return {"pong": value}


# -- prefetch ------------------------------------------------------------------------------------

gated_map = Flow("wt_gated_map", max_attempts=2, timeout=30)


@gated_map.map()
def hold(item: Any, ctx: Context) -> int:
    """Waits until its gate file exists (when it has one), so a test decides when it finishes."""
    gate = item.get("gate")
    if gate:
        deadline = time.monotonic() + 60
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} was never opened")
            time.sleep(0.01)
    return int(item["n"])
