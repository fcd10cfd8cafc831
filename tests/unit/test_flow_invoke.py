"""Calling handlers: arity, async handlers, typed inputs and output conversion.

The annotations in this module are strings (`from __future__ import annotations`), so every typed
handler here also exercises the resolution of string annotations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import threading
from typing import Any, TypedDict

import msgspec
import pytest

from pgflow.flow import (
    Flow,
    FlowDefinitionError,
    HandlerOutputError,
    InputValidationError,
    Step,
)


class Item(msgspec.Struct):
    name: str
    count: int


class Order(msgspec.Struct):
    items: list[Item]
    placed: datetime.date


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Totals(TypedDict):
    total: int


class Opaque:
    """A plain class: msgspec has no way to build it from JSON."""


class WithTagA(msgspec.Struct):
    a: int


class WithTagB(msgspec.Struct):
    b: int


def define(function: Any, **options: Any) -> Step:
    flow = Flow("invoke")
    flow.step("s", **options)(function)
    return flow.get_step("s")


# -- arity -----------------------------------------------------------------------------------------


def test_a_one_parameter_handler_gets_only_the_input() -> None:
    step = define(lambda value: ("got", value))
    assert not step.accepts_context
    assert step.invoke({"a": 1}, "ctx") == ("got", {"a": 1})


def test_a_two_parameter_handler_gets_input_and_ctx() -> None:
    def both(value: Any, ctx: Any) -> Any:
        return (value, ctx)

    step = define(both)
    assert step.accepts_context
    ctx = object()
    assert step.invoke(3, ctx) == (3, ctx)


def test_optional_and_variadic_second_parameters_receive_ctx() -> None:
    def optional(value: Any, ctx: Any = None) -> Any:
        return ctx

    def variadic(*args: Any) -> Any:
        return args

    assert define(optional).invoke(1, "ctx") == "ctx"
    assert define(variadic).invoke(1, "ctx") == (1, "ctx")


def test_methods_partials_and_callable_objects_are_handlers() -> None:
    class Scorer:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        def score(self, value: int, ctx: Any) -> int:
            return value * self.factor

        def __call__(self, value: int) -> int:
            return value + self.factor

    def add(offset: int, value: int) -> int:
        return offset + value

    scorer = Scorer(10)
    flow = Flow("callables")
    flow.step("method")(scorer.score)
    flow.step("instance")(scorer)
    flow.step("partial")(functools.partial(add, 100))
    assert flow.get_step("method").invoke(2, None) == 20
    assert flow.get_step("instance").invoke(2, None) == 12
    assert flow.get_step("partial").invoke(2, None) == 102
    # The instance's `value: int` annotation lives on __call__ and is honoured.
    assert flow.get_step("instance").input_type is int


# -- async handlers ----------------------------------------------------------------------------------


async def double_later(value: int, ctx: Any) -> Any:
    await asyncio.sleep(0)
    return (value * 2, ctx)


def test_async_handlers_are_awaited_by_invoke_async() -> None:
    step = define(double_later)
    assert step.is_async
    assert asyncio.run(step.invoke_async(4, "ctx")) == (8, "ctx")


def test_invoke_async_also_calls_sync_handlers() -> None:
    step = define(lambda value: value + 1)
    assert not step.is_async
    assert asyncio.run(step.invoke_async(1)) == 2


def test_invoke_runs_an_async_handler_to_completion_outside_an_event_loop() -> None:
    step = define(double_later)
    results: list[Any] = []
    # A fresh thread, as in the thread executor, has no running loop.
    thread = threading.Thread(target=lambda: results.append(step.invoke(5, None)))
    thread.start()
    thread.join(timeout=10)
    assert results == [(10, None)]


def test_invoke_refuses_an_async_handler_inside_a_running_loop() -> None:
    step = define(double_later)

    async def call_sync() -> None:
        step.invoke(1, None)

    with pytest.raises(RuntimeError, match=r"use `await step.invoke_async\(...\)`"):
        asyncio.run(call_sync())


def test_async_callable_objects_are_detected() -> None:
    class Handler:
        async def __call__(self, value: int) -> int:
            return value * 3

    step = define(Handler())
    assert step.is_async
    assert asyncio.run(step.invoke_async(2)) == 6


# -- typed inputs ----------------------------------------------------------------------------------


def test_a_struct_input_is_converted() -> None:
    def handle(item: Item, ctx: Any) -> Any:
        return item

    step = define(handle)
    assert step.input_type is Item
    assert step.invoke({"name": "a", "count": 2}, None) == Item("a", 2)


def test_a_struct_mismatch_names_the_step_and_msgspecs_reason() -> None:
    def handle(item: Item) -> Item:
        return item

    step = define(handle)
    with pytest.raises(InputValidationError) as caught:
        step.invoke({"name": "a", "count": "2"}, None)
    error = caught.value
    assert str(error) == (
        "step 's' of flow 'invoke': the input does not match `Item`: "
        "Expected `int`, got `str` - at `$.count`"
    )
    assert error.reason == "Expected `int`, got `str` - at `$.count`"
    assert (error.flow_slug, error.step_slug) == ("invoke", "s")
    with pytest.raises(InputValidationError, match="Object missing required field `count`"):
        step.invoke({"name": "a"}, None)


def test_an_int_input_is_checked_strictly() -> None:
    def handle(value: int) -> int:
        return value + 1

    step = define(handle)
    assert step.invoke(41) == 42
    with pytest.raises(
        InputValidationError, match="does not match `int`: Expected `int`, got `str`"
    ):
        step.invoke("41")


def test_a_list_of_structs_is_converted_and_errors_carry_the_path() -> None:
    def handle(items: list[Item]) -> int:
        return sum(item.count for item in items)

    step = define(handle)
    assert step.invoke([{"name": "a", "count": 1}, {"name": "b", "count": 2}]) == 3
    with pytest.raises(InputValidationError) as caught:
        step.invoke([{"name": "a", "count": 1}, {"name": "b", "count": None}])
    assert "does not match `list[Item]`" in str(caught.value)
    assert caught.value.reason == "Expected `int`, got `null` - at `$[1].count`"


def test_dataclasses_typeddicts_and_nested_types_are_converted() -> None:
    def point(value: Point) -> int:
        return value.x + value.y

    def totals(value: Totals) -> int:
        return value["total"]

    def order(value: Order) -> datetime.date:
        return value.placed

    assert define(point).invoke({"x": 1, "y": 2}) == 3
    assert define(totals).invoke({"total": 9}) == 9
    placed = define(order).invoke({"items": [], "placed": "2024-05-01"})
    assert placed == datetime.date(2024, 5, 1)


def test_untyped_any_and_object_inputs_are_passed_as_is() -> None:
    def untyped(value, ctx):  # type: ignore[no-untyped-def]
        return value

    def any_typed(value: Any) -> Any:
        return value

    def object_typed(value: object) -> object:
        return value

    payload = {"count": "not an int"}
    for function in (untyped, any_typed, object_typed):
        step = define(function)
        assert step.input_type is None
        assert step.invoke(payload, None) is payload


def test_convert_false_skips_conversion() -> None:
    def handle(item: Item) -> Any:
        return item

    step = define(handle)
    already = Item("a", 1)
    assert step.invoke(already, convert=False) is already
    raw = {"name": "a", "count": "bad"}
    assert step.invoke(raw, convert=False) is raw


def test_convert_input_raw_decodes_straight_into_the_type() -> None:
    def handle(items: list[Item]) -> Any:
        return items

    step = define(handle)
    assert step.convert_input_raw(b'[{"name":"a","count":1}]') == [Item("a", 1)]
    assert step.convert_input_raw('[{"name":"b","count":2}]') == [Item("b", 2)]
    with pytest.raises(InputValidationError) as caught:
        step.convert_input_raw(b'[{"name":"a","count":true}]')
    assert caught.value.reason == "Expected `int`, got `bool` - at `$[0].count`"
    with pytest.raises(InputValidationError, match="the input is not valid JSON"):
        step.convert_input_raw(b'[{"name":')


def test_convert_input_raw_of_an_untyped_handler_returns_plain_json() -> None:
    step = define(lambda value: value)
    assert step.convert_input_raw(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    with pytest.raises(InputValidationError, match="does not match JSON: the input is not valid"):
        step.convert_input_raw(b"{")


def test_input_errors_are_raised_before_the_handler_runs() -> None:
    calls: list[Any] = []

    async def handle(value: int) -> None:
        calls.append(value)

    step = define(handle)
    with pytest.raises(InputValidationError):
        asyncio.run(step.invoke_async("x"))
    assert calls == []


def unresolvable_ctx(value: Item, ctx: NotDefinedAnywhere) -> Item:  # type: ignore[name-defined]  # noqa: F821
    return value


def scaled(factor: int, item: Item, ctx: NotDefinedAnywhere) -> int:  # type: ignore[name-defined]  # noqa: F821
    return factor * item.count


class CountHandler:
    def __call__(self, item: Item) -> int:
        return item.count


def test_the_input_annotation_resolves_even_when_another_annotation_does_not() -> None:
    step = define(unresolvable_ctx)
    assert step.input_type is Item
    partial_step = define(functools.partial(scaled, 3))
    assert partial_step.input_type is Item
    assert partial_step.invoke({"name": "a", "count": 2}, None) == 6


def test_callable_objects_are_typed_by_their_call_method() -> None:
    step = define(CountHandler())
    assert step.input_type is Item
    with pytest.raises(InputValidationError, match="`Item`"):
        step.invoke({"name": "a"})


def test_an_unresolvable_input_annotation_is_a_definition_error() -> None:
    def handle(value: MissingType) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(FlowDefinitionError) as caught:
        define(handle)
    message = str(caught.value)
    assert "step 's' of flow 'invoke': cannot resolve the annotation 'MissingType'" in message
    assert "NameError" in message
    assert "define the type at module level" in message


def test_an_input_type_msgspec_cannot_build_is_a_definition_error() -> None:
    def opaque(value: Opaque) -> None:
        return None

    def nested(value: list[Opaque | None]) -> None:
        return None

    def ambiguous(value: WithTagA | WithTagB) -> None:
        return None

    with pytest.raises(FlowDefinitionError, match="msgspec cannot build `Opaque` from JSON"):
        define(opaque)
    with pytest.raises(FlowDefinitionError) as caught:
        define(nested)
    assert "annotated with `list[Opaque | None]`" in str(caught.value)
    with pytest.raises(FlowDefinitionError, match="which msgspec cannot decode"):
        define(ambiguous)


# -- outputs ----------------------------------------------------------------------------------------


def test_to_builtins_turns_structs_and_dataclasses_into_json_values() -> None:
    step = define(lambda value: value)
    assert step.to_builtins(Item("a", 1)) == {"name": "a", "count": 1}
    assert step.to_builtins(Point(1, 2)) == {"x": 1, "y": 2}
    order = Order(items=[Item("a", 1)], placed=datetime.date(2024, 5, 1))
    assert step.to_builtins({"order": order, 3: {1, 2}}) == {
        "order": {"items": [{"name": "a", "count": 1}], "placed": "2024-05-01"},
        "3": [1, 2],
    }
    for scalar in ("s", 1, 1.5, True, None):
        assert step.to_builtins(scalar) is scalar


def test_to_builtins_reports_values_without_a_json_form() -> None:
    step = define(lambda value: value)
    with pytest.raises(HandlerOutputError) as caught:
        step.to_builtins({"thing": Opaque()})
    message = str(caught.value)
    assert (
        "step 's' of flow 'invoke': the handler returned a value that cannot be turned" in message
    )
    assert "Opaque" in message
    assert caught.value.step_slug == "s"
