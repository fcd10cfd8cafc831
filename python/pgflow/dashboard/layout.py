"""Where each step of a flow goes in the drawn DAG: a layered layout, computed on the server so
the page only draws it (and so it is tested here).

A step's layer is the longest path to it from a root (roots are layer 0), so every edge goes
forward. Within a layer, steps are ordered to reduce edge crossings by the barycenter heuristic:
sweeps down (by the mean position of a step's parents) and up (of its children), keeping the
order with the fewest crossings seen. Good for the few dozen steps a flow has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

SWEEPS = 8


@dataclass(frozen=True)
class Placement:
    layer: int
    order: int


def layout(steps: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Placement]:
    """`steps`: (slug, dependencies) in step order (a step after its dependencies, as flows
    define them). Returns each step's layer and its order within the layer (both from 0)."""
    layer: dict[str, int] = {}
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {slug: [] for slug, _ in steps}
    for slug, deps in steps:
        unknown = [d for d in deps if d not in layer]
        if unknown:
            raise ValueError(f"step {slug!r} depends on {unknown}, which come later or not at all")
        parents[slug] = list(deps)
        layer[slug] = 1 + max((layer[d] for d in deps), default=-1)
        for dep in deps:
            children[dep].append(slug)
    layers: list[list[str]] = [[] for _ in range(1 + max(layer.values(), default=-1))]
    for slug, _ in steps:
        layers[layer[slug]].append(slug)

    best = [list(row) for row in layers]
    best_crossings = crossings(best, parents)
    current = [list(row) for row in layers]
    for sweep in range(SWEEPS):
        if best_crossings == 0:
            break
        down = sweep % 2 == 0
        order = range(1, len(current)) if down else range(len(current) - 2, -1, -1)
        for i in order:
            neighbours = parents if down else children
            position = _positions(current)
            current[i] = _by_barycenter(current[i], neighbours, position)
        found = crossings(current, parents)
        if found < best_crossings:
            best, best_crossings = [list(row) for row in current], found
    return {
        slug: Placement(layer=i, order=j)
        for i, row in enumerate(best)
        for j, slug in enumerate(row)
    }


def _positions(layers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Each step's position within its layer, centred, so layers of different widths align."""
    found: dict[str, float] = {}
    for row in layers:
        offset = (len(row) - 1) / 2
        for j, slug in enumerate(row):
            found[slug] = j - offset
    return found


def _by_barycenter(
    row: list[str], neighbours: Mapping[str, Sequence[str]], position: Mapping[str, float]
) -> list[str]:
    def key(item: tuple[int, str]) -> tuple[float, int]:
        j, slug = item
        linked = neighbours.get(slug, ())
        centre = sum(position[n] for n in linked) / len(linked) if linked else position[slug]
        return (centre, j)  # ties keep their order, so the result is stable

    return [slug for _, slug in sorted(enumerate(row), key=key)]


def crossings(layers: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]]) -> int:
    """How many pairs of edges cross, each edge taken as a straight line between the centred
    positions of its ends (edges that share an end never cross)."""
    position = _positions(layers)
    layer = {slug: i for i, row in enumerate(layers) for slug in row}
    edges = [(p, c) for c, deps in parents.items() for p in deps]
    count = 0
    for (p1, c1), (p2, c2) in combinations(edges, 2):
        if len({p1, c1, p2, c2}) < 4:
            continue
        start, end = max(layer[p1], layer[p2]), min(layer[c1], layer[c2])
        if start >= end:
            continue  # the edges do not run beside each other

        def at(p: str, c: str, x: float) -> float:
            span = layer[c] - layer[p]
            return position[p] + (position[c] - position[p]) * (x - layer[p]) / span

        before = at(p1, c1, start) - at(p2, c2, start)
        after = at(p1, c1, end) - at(p2, c2, end)
        if before * after < 0:
            count += 1
    return count
