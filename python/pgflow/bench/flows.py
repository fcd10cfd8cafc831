"""Flows used by `pgflow bench`. They live in an importable module so that worker processes
(`pgflow worker pgflow.bench.flows:map_flow`) and process executors can load them."""

from __future__ import annotations

from typing import Any

from pgflow.flow import Flow

CHAIN_LENGTH = 50

# map: a root map of no-op tasks
map_flow = Flow("bench_map", max_attempts=3, base_delay=1, timeout=60)


@map_flow.map()
def item(value: Any) -> Any:
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


FLOWS = {
    "map": "pgflow.bench.flows:map_flow",
    "chain": "pgflow.bench.flows:chain_flow",
    "diamond": "pgflow.bench.flows:diamond_flow",
    "fanout": "pgflow.bench.flows:fanout_flow",
}
