"""The DAG layout the dashboard draws: layers by longest path, order within a layer chosen to
reduce crossings."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")  # pgflow.dashboard needs the `dashboard` extra

from pgflow.dashboard.layout import crossings, layout


def placed(steps: list[tuple[str, list[str]]]) -> dict[str, tuple[int, int]]:
    return {slug: (p.layer, p.order) for slug, p in layout(steps).items()}


def test_a_chain_is_one_step_per_layer() -> None:
    assert placed([("a", []), ("b", ["a"]), ("c", ["b"])]) == {
        "a": (0, 0),
        "b": (1, 0),
        "c": (2, 0),
    }


def test_a_layer_is_the_longest_path_from_a_root() -> None:
    # d depends on a directly and through b -> c: it goes after c, not next to b
    found = placed([("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["a", "c"])])
    assert found["d"][0] == 3
    assert placed([("x", []), ("y", [])]) == {"x": (0, 0), "y": (0, 1)}


def test_the_order_within_layers_removes_avoidable_crossings() -> None:
    steps = [("a", []), ("b", []), ("x", ["b"]), ("y", ["a"])]
    parents = {slug: deps for slug, deps in steps}
    assert crossings([["a", "b"], ["x", "y"]], parents) == 1  # the order as declared
    found = placed(steps)
    assert found["y"][1] < found["x"][1]
    rows = [["a", "b"], sorted(["x", "y"], key=lambda s: found[s][1])]
    assert crossings(rows, parents) == 0


def test_a_wider_flow_comes_out_without_crossings() -> None:
    steps = [
        ("root", []),
        ("m1", ["root"]),
        ("m2", ["root"]),
        ("m3", ["root"]),
        ("c3", ["m3"]),
        ("c1", ["m1"]),
        ("c2", ["m2"]),
        ("end", ["c1", "c2", "c3"]),
    ]
    result = layout(steps)
    rows: list[list[str]] = [[] for _ in range(4)]
    for slug, p in sorted(result.items(), key=lambda kv: kv[1].order):
        rows[p.layer].append(slug)
    assert crossings(rows, {slug: deps for slug, deps in steps}) == 0
    assert sorted(p.order for p in result.values() if p.layer == 2) == [0, 1, 2]


def test_a_dependency_that_comes_later_is_refused() -> None:
    with pytest.raises(ValueError, match="depends on"):
        layout([("b", ["a"]), ("a", [])])
