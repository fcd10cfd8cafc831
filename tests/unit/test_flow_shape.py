"""Flow shapes (what `ensure_flow_compiled` receives) and option resolution."""

from __future__ import annotations

import json
from typing import Any

from pgflow.flow import Flow


def handler(value: Any) -> Any:
    return value


NO_PATTERN = {"defined": False}


def plain(slug: str, deps: list[str], step_type: str = "single") -> dict[str, Any]:
    return {
        "slug": slug,
        "stepType": step_type,
        "dependencies": deps,
        "whenUnmet": "skip",
        "whenExhausted": "fail",
        "requiredInputPattern": NO_PATTERN,
        "forbiddenInputPattern": NO_PATTERN,
        "options": {},
    }


def test_diamond_shape_lists_steps_in_definition_order_with_sorted_dependencies() -> None:
    flow = Flow("diamond")
    flow.step("root")(handler)
    flow.step("right", depends_on=["root"])(handler)
    flow.step("left", depends_on=["root"])(handler)
    # Declared in non-alphabetical order on purpose: the shape sorts them.
    flow.step("join", depends_on=["right", "left"])(handler)
    assert flow.shape() == {
        "steps": [
            plain("root", []),
            plain("right", ["root"]),
            plain("left", ["root"]),
            plain("join", ["left", "right"]),
        ],
        "options": {},
    }
    assert flow.get_step("join").dependencies == ("right", "left")


def test_map_shape_covers_root_maps_and_dependent_maps() -> None:
    flow = Flow("maps")

    @flow.map()
    def each(item: Any) -> Any:
        return [item]

    @flow.map(array=each)
    def again(item: Any) -> Any:
        return item

    @flow.step(depends_on=[again])
    def total(deps: Any) -> Any:
        return deps

    assert flow.shape()["steps"] == [
        plain("each", [], "map"),
        plain("again", ["each"], "map"),
        plain("total", ["again"]),
    ]


def test_conditions_modes_and_options_appear_in_the_shape() -> None:
    flow = Flow("conditional", max_attempts=5, timeout=30)
    flow.step("check", if_={"env": "prod"}, if_not={"dry_run": True}, max_attempts=0)(handler)
    flow.step(
        "deploy",
        depends_on=["check"],
        if_={"check": {"ok": True}},
        when_unmet="skip-cascade",
        when_exhausted="skip",
        base_delay=2,
        timeout=10,
        start_delay=0,
    )(handler)
    flow.map("notify", array="check", when_exhausted="skip-cascade", when_unmet="fail")(handler)
    shape = flow.shape()
    assert shape == {
        "steps": [
            {
                "slug": "check",
                "stepType": "single",
                "dependencies": [],
                "whenUnmet": "skip",
                "whenExhausted": "fail",
                "requiredInputPattern": {"defined": True, "value": {"env": "prod"}},
                "forbiddenInputPattern": {"defined": True, "value": {"dry_run": True}},
                "options": {"maxAttempts": 0},
            },
            {
                "slug": "deploy",
                "stepType": "single",
                "dependencies": ["check"],
                "whenUnmet": "skip-cascade",
                "whenExhausted": "skip",
                "requiredInputPattern": {"defined": True, "value": {"check": {"ok": True}}},
                "forbiddenInputPattern": NO_PATTERN,
                "options": {"baseDelay": 2, "timeout": 10, "startDelay": 0},
            },
            {
                "slug": "notify",
                "stepType": "map",
                "dependencies": ["check"],
                "whenUnmet": "fail",
                "whenExhausted": "skip-cascade",
                "requiredInputPattern": NO_PATTERN,
                "forbiddenInputPattern": NO_PATTERN,
                "options": {},
            },
        ],
        "options": {"maxAttempts": 5, "timeout": 30},
    }
    # The shape goes to Postgres as JSON, so it must survive a round trip unchanged.
    assert json.loads(json.dumps(shape)) == shape


def test_an_empty_flow_has_an_empty_shape() -> None:
    assert Flow("empty", base_delay=0).shape() == {"steps": [], "options": {"baseDelay": 0}}


def test_each_shape_is_a_fresh_object() -> None:
    flow = Flow("fresh")
    flow.step("a", if_={"k": [1]})(handler)
    first = flow.shape()
    first["steps"][0]["requiredInputPattern"]["value"]["k"].append(2)
    first["options"]["timeout"] = 1
    assert flow.shape()["steps"][0]["requiredInputPattern"] == {
        "defined": True,
        "value": {"k": [1]},
    }
    assert flow.shape()["options"] == {}


def test_options_resolve_from_step_then_flow_then_sql_defaults() -> None:
    flow = Flow("resolve", max_attempts=7, base_delay=4)
    flow.step("inherits")(handler)
    flow.step("overrides", max_attempts=0, base_delay=0, timeout=5, start_delay=9)(handler)
    inherits = flow.get_step("inherits")
    overrides = flow.get_step("overrides")

    assert (inherits.max_attempts, inherits.base_delay, inherits.timeout) == (None, None, None)
    assert inherits.start_delay is None
    assert inherits.effective_max_attempts == 7
    assert inherits.effective_base_delay == 4
    assert inherits.effective_timeout == 60
    assert inherits.effective_start_delay == 0

    # Zero is a value, not "unset".
    assert overrides.effective_max_attempts == 0
    assert overrides.effective_base_delay == 0
    assert overrides.effective_timeout == 5
    assert overrides.effective_start_delay == 9


def test_a_flow_without_options_uses_the_sql_defaults() -> None:
    flow = Flow("defaults")
    flow.map("m")(handler)
    step = flow.get_step("m")
    assert (flow.max_attempts, flow.base_delay, flow.timeout) == (None, None, None)
    assert step.effective_max_attempts == 3
    assert step.effective_base_delay == 5  # pgflow.create_flow turns a NULL base_delay into 5
    assert step.effective_timeout == 60
    assert step.effective_start_delay == 0
