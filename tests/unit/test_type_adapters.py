"""pgflow_register_type_adapters: plugins teach pgflow types msgspec does not know, as handler
inputs (built once per handler when the step is defined; a mismatch is an InputValidationError)
and as outputs (msgspec's enc_hook asks them, once per class). Flows msgspec handles alone never
ask them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from pgflow import codec, plugins
from pgflow.errors import FlowDefinitionError, InputValidationError
from pgflow.flow import Flow
from pgflow.hooks import InputConverter, RegisterTypeAdapter, TypeAdapter, hookimpl


class Money:
    """A class msgspec cannot build or write."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return self.cents


class Opaque:
    pass


class Item(msgspec.Struct):
    name: str


class MoneyConverter:
    def from_json(self, raw: bytes | str) -> Any:
        return self.from_value(json.loads(raw))

    def from_value(self, value: Any) -> Any:
        if isinstance(value, Money):
            return value
        if value == "boom":
            raise RuntimeError("the converter broke")
        if not isinstance(value, int):
            raise ValueError(f"expected cents as an integer, got {value!r}")
        return Money(value)


class MoneyTypes:
    def __init__(self) -> None:
        self.asked: list[Any] = []
        self.encoders_asked: list[type] = []

    def input_converter(self, annotation: Any) -> InputConverter | None:
        self.asked.append(annotation)
        if annotation is Money:
            return MoneyConverter()
        if annotation == list[Opaque]:
            raise RuntimeError("cannot make up my mind")
        return None

    def output_encoder(self, cls: type) -> Callable[[Any], Any] | None:
        self.encoders_asked.append(cls)
        if cls is Money:
            return lambda money: {"cents": money.cents}
        return None


class MoneyPlugin:
    def __init__(self) -> None:
        self.types = MoneyTypes()

    @hookimpl
    def pgflow_register_type_adapters(self, register: RegisterTypeAdapter) -> None:
        register("money", self.types)


@pytest.fixture(autouse=True)
def fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test builds its own plugin manager, without installed entry points or env."""
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture
def money() -> MoneyTypes:
    plugin = MoneyPlugin()
    plugins.get_plugin_manager().register(plugin, name="money-plugin")
    return plugin.types


def test_a_type_adapter_builds_inputs_msgspec_cannot(money: MoneyTypes) -> None:
    flow = Flow("ta_money")

    @flow.step()
    def double(amount: Money) -> Money:
        return Money(amount.cents * 2)

    step = flow.get_step("double")
    assert step.input_type is Money
    assert money.asked == [Money]  # once, at definition
    assert step.convert_input_raw(b"21") == Money(21)
    assert step.convert_input_raw(memoryview(b"21")) == Money(21)
    assert step.invoke(21) == Money(42)
    assert money.asked == [Money]
    with pytest.raises(InputValidationError) as caught:
        step.convert_input_raw(b'"lots"')
    assert str(caught.value) == (
        "step 'double' of flow 'ta_money': the input does not match `Money`: expected cents as "
        "an integer, got 'lots'"
    )
    assert caught.value.reason == "expected cents as an integer, got 'lots'"
    # a converter that breaks fails the task like a mismatch, and says so
    with pytest.raises(InputValidationError, match="the type adapter failed: RuntimeError"):
        step.convert_input("boom")
    # the run input is checked the same way before a run is created
    with pytest.raises(InputValidationError, match="expected cents"):
        flow.check_run_input(b"[1]")
    flow.check_run_input(b"5")


def test_msgspec_types_never_reach_a_type_adapter(money: MoneyTypes) -> None:
    flow = Flow("ta_plain")

    @flow.step()
    def names(items: list[Item]) -> list[str]:
        return [item.name for item in items]

    @flow.step()
    def count(value: int) -> int:
        return value

    assert money.asked == []
    assert codec.encode_value({"items": [Item("a")], "n": 1}) == b'{"items":[{"name":"a"}],"n":1}'
    assert money.encoders_asked == []


def test_outputs_of_unknown_classes_go_to_the_type_adapter_once_per_class(
    money: MoneyTypes,
) -> None:
    assert codec.encode_value([Money(1), {"m": Money(2)}]) == b'[{"cents":1},{"m":{"cents":2}}]'
    assert codec.encode_value(Money(3)) == b'{"cents":3}'
    assert money.encoders_asked == [Money]
    flow = Flow("ta_out")

    @flow.step()
    def make(value: Any) -> Any:
        return value

    assert flow.get_step("make").to_builtins({"m": Money(4)}) == {"m": {"cents": 4}}
    with pytest.raises(codec.UnencodableValue, match="Encoding objects of type Opaque"):
        codec.encode_value([Opaque()])
    with pytest.raises(codec.UnencodableValue, match="Encoding objects of type Opaque"):
        codec.encode_value([Opaque()])
    assert money.encoders_asked == [Money, Opaque]


def test_an_encoder_that_fails_is_an_unencodable_value() -> None:
    class Broken:
        @hookimpl
        def pgflow_register_type_adapters(self, register: RegisterTypeAdapter) -> None:
            register("broken", BrokenTypes())

    class BrokenTypes:
        def input_converter(self, annotation: Any) -> InputConverter | None:
            return None

        def output_encoder(self, cls: type) -> Callable[[Any], Any] | None:
            def fail(value: Any) -> Any:
                raise KeyError("no cents")

            return fail

    plugins.get_plugin_manager().register(Broken(), name="broken")
    with pytest.raises(codec.UnencodableValue, match="the type adapter for Money failed: KeyError"):
        codec.encode_value(Money(1))


def test_without_a_type_adapter_the_definition_error_names_plugins() -> None:
    flow = Flow("ta_none")
    with pytest.raises(FlowDefinitionError) as caught:

        @flow.step()
        def double(amount: Money) -> Money:
            return amount

    message = str(caught.value)
    assert message.startswith(
        "step 'double' of flow 'ta_none': the input parameter 'amount' is annotated with "
        "`Money`, and msgspec cannot build `Money` from JSON; use a msgspec.Struct, a "
        "dataclass, a TypedDict or builtin types, install a plugin that adds such types "
        "(pgflow-pydantic does for pydantic models)"
    )
    assert message.endswith("(no type adapter handles `Money`; type adapters: none)")


def test_the_definition_error_names_a_plugin_that_failed_to_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        plugins.manager,
        "_entry_points",
        lambda: (
            plugins.manager.importlib.metadata.EntryPoint("money", "no_such_module", "pgflow"),
        ),
    )
    plugins.reset_plugin_manager()
    flow = Flow("ta_failed")
    with pytest.raises(FlowDefinitionError, match=r"plugin 'money' .* failed to load"):

        @flow.step()
        def double(amount: Money) -> Money:
            return amount


def test_an_adapter_that_fails_on_an_annotation_is_a_definition_error(money: MoneyTypes) -> None:
    flow = Flow("ta_fails")
    with pytest.raises(FlowDefinitionError) as caught:

        @flow.step()
        def many(values: list[Opaque]) -> None:
            return None

    assert "the type adapter that took it failed: PluginError: type adapter 'money': " in str(
        caught.value
    )
    assert "cannot make up my mind" in str(caught.value)


def test_type_adapters_are_listed_and_their_names_unique(money: MoneyTypes) -> None:
    (info,) = [info for info in plugins.describe_plugins() if info.name == "money-plugin"]
    assert info.type_adapters == ("money",)
    assert list(plugins.available_type_adapters()) == ["money"]
    adapter: TypeAdapter = plugins.available_type_adapters()["money"]
    assert adapter is money

    class Again:
        @hookimpl
        def pgflow_register_type_adapters(self, register: RegisterTypeAdapter) -> None:
            register("money", MoneyTypes())

    plugins.get_plugin_manager().register(Again(), name="again")
    with pytest.raises(plugins.PluginError, match="type adapter 'money' is registered by two"):
        plugins.available_type_adapters()
