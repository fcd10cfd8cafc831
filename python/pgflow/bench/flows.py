"""Flows used by `pgflow bench`. They live in an importable module so that worker processes
(`pgflow worker pgflow.bench.flows:map_flow`) and process executors can load them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pgflow.flow import Flow

CHAIN_LENGTH = 50

# map: a root map of no-op tasks
map_flow = Flow("bench_map", max_attempts=3, base_delay=1, timeout=60)


@map_flow.map()
def item(value: Any) -> Any:
    return value


# the same with an async handler, for the asyncio executor
map_async_flow = Flow("bench_map_async", max_attempts=3, base_delay=1, timeout=60)


@map_async_flow.map(slug="item")
async def _item_async(value: Any) -> Any:
    return value


# chain: 50 sequential steps, each adding one, to measure the latency of one hop
chain_flow = Flow("bench_chain", max_attempts=3, base_delay=1, timeout=60)


def _add_one(deps: dict[str, int]) -> int:
    return next(iter(deps.values())) + 1


@chain_flow.step(slug="s0")
def _chain_start(flow_input: Any) -> int:
    return 0


for _i in range(1, CHAIN_LENGTH):
    chain_flow.step(slug=f"s{_i}", depends_on=[f"s{_i - 1}"])(_add_one)


# diamond: a -> (b, c) -> d
diamond_flow = Flow("bench_diamond", max_attempts=3, base_delay=1, timeout=60)


@diamond_flow.step()
def a(flow_input: Any) -> int:
    return int(flow_input["n"])


@diamond_flow.step(depends_on=[a])
def b(deps: dict[str, int]) -> int:
    return deps["a"] + 1


@diamond_flow.step(depends_on=[a])
def c(deps: dict[str, int]) -> int:
    return deps["a"] * 2


@diamond_flow.step(depends_on=[b, c])
def d(deps: dict[str, int]) -> int:
    return deps["b"] + deps["c"]


# fanout: one step produces a large array, a second maps over it
fanout_flow = Flow("bench_fanout", max_attempts=3, base_delay=1, timeout=120)


@fanout_flow.step()
def produce(flow_input: Any) -> list[int]:
    return list(range(int(flow_input["n"])))


@fanout_flow.map(array=produce)
def double(value: int) -> int:
    return value * 2


# cpu: a root map whose tasks each burn about 5 ms of pure-Python CPU (holding the GIL)
CPU_SECONDS = 0.005
cpu_flow = Flow("bench_cpu", max_attempts=3, base_delay=1, timeout=60)


@cpu_flow.map(slug="burn")
def _burn(value: int) -> int:
    # thread CPU time, so that the task does the same work however busy the machine is
    end = time.thread_time() + CPU_SECONDS
    total = 0
    while time.thread_time() < end:
        for i in range(500):
            total += i * i
    return value


# io: a root map whose tasks each wait about 50 ms, as handlers waiting on a network do:
# time.sleep for the executors that run sync handlers, asyncio.sleep on the asyncio executor
IO_SECONDS = 0.05
io_flow = Flow("bench_io", max_attempts=3, base_delay=1, timeout=60)


@io_flow.map(slug="wait")
def _wait(value: int) -> int:
    time.sleep(IO_SECONDS)
    return value


io_async_flow = Flow("bench_io_async", max_attempts=3, base_delay=1, timeout=60)


@io_async_flow.map(slug="wait")
async def _wait_async(value: int) -> int:
    await asyncio.sleep(IO_SECONDS)
    return value


FLOWS = {
    "map": "pgflow.bench.flows:map_flow",
    "map-async": "pgflow.bench.flows:map_async_flow",
    "chain": "pgflow.bench.flows:chain_flow",
    "diamond": "pgflow.bench.flows:diamond_flow",
    "fanout": "pgflow.bench.flows:fanout_flow",
    "cpu": "pgflow.bench.flows:cpu_flow",
    "io": "pgflow.bench.flows:io_flow",
    "io-async": "pgflow.bench.flows:io_async_flow",
}


def flow_ref(scenario: str, executor: str) -> str:
    """The flow a scenario runs on an executor: the map and io scenarios' handlers are async on
    the asyncio executor (what it is for) and sync elsewhere."""
    if scenario in ("map", "io") and executor == "asyncio":
        return FLOWS[f"{scenario}-async"]
    return FLOWS[scenario]
