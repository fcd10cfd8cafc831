"""`Flow.check_run_input`: a run input is checked against the typed inputs of the root steps
(each element, for a root map step) with the very conversion a worker applies to the task's
input, so the message is the worker's."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pgflow import Flow, InputValidationError


class Item(msgspec.Struct):
    n: int


single_flow = Flow("ri_single")


@single_flow.step()
def single(item: Item) -> int:
    return item.n


@single_flow.step(depends_on=[single])
def later(deps: dict[str, Item]) -> int:  # typed, but it takes its dependency's output
    return 0


map_flow = Flow("ri_map")


@map_flow.map()
def each(item: Item) -> int:
    return item.n


untyped = Flow("ri_untyped")


@untyped.step()
def anything(value: Any) -> Any:
    return value


def test_a_fitting_input_passes() -> None:
    single_flow.check_run_input(b'{"n": 1}')  # `later` would refuse it: only roots are checked
    map_flow.check_run_input(b'[{"n": 1}, {"n": 2}]')
    untyped.check_run_input(b'"whatever"')


def test_a_root_single_step_checks_the_whole_input() -> None:
    with pytest.raises(InputValidationError) as caught:
        single_flow.check_run_input(b'{"n": "one"}')
    with pytest.raises(InputValidationError) as worker_says:
        single_flow.get_step("single").convert_input_raw(b'{"n": "one"}')
    assert str(caught.value) == str(worker_says.value)
    assert str(caught.value) == (
        "step 'single' of flow 'ri_single': the input does not match `Item`: "
        "Expected `int`, got `str` - at `$.n`"
    )


def test_a_root_map_step_checks_each_element() -> None:
    with pytest.raises(InputValidationError) as caught:
        map_flow.check_run_input(b'[{"n": 1}, {"m": 2}]')
    assert str(caught.value) == (
        "step 'each' of flow 'ri_map': the input does not match `Item`: "
        "Object missing required field `n`"
    )


def test_an_input_a_root_map_cannot_map_over_is_left_to_the_database() -> None:
    map_flow.check_run_input(b'{"n": 1}')  # pgflow.start_flow refuses it in its own words
