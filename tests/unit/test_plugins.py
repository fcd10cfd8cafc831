"""The plugin manager and every hook, with plugins defined in the tests."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from pgflow import plugins
from pgflow.executors import InlineExecutor, ThreadExecutor
from pgflow.executors.base import Executor
from pgflow.flow import Flow
from pgflow.hooks import RegisterExecutor, RegisterSerializer, hookimpl
from pgflow.plugins import PluginError

BUILTIN_EXECUTORS = {"thread", "process", "asyncio", "inline"}


@pytest.fixture(autouse=True)
def fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test builds its own plugin manager, without installed entry points or env."""
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def resolve_nothing(flow_slug: str, step_slug: str) -> Any:
    raise AssertionError("no step is resolved in these tests")


def use_entry_points(
    monkeypatch: pytest.MonkeyPatch, **modules: tuple[str, types.ModuleType | None]
) -> None:
    """Pretend distributions declare `name = module:attr` entry points in group pgflow.

    Each keyword is an entry point name mapped to (its value, the module to serve for it or
    None to leave the import to fail)."""
    entry_points = []
    for name, (value, module) in modules.items():
        if module is not None:
            monkeypatch.setitem(sys.modules, value.partition(":")[0], module)
        entry_points.append(importlib.metadata.EntryPoint(name=name, value=value, group="pgflow"))
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: tuple(entry_points))
    plugins.reset_plugin_manager()


class TinyExecutor(InlineExecutor):
    name = "tiny"


class ExecutorPlugin:
    @hookimpl
    def pgflow_register_executors(self, register: RegisterExecutor) -> None:
        register("tiny", TinyExecutor)


# -- manager ---------------------------------------------------------------------------------------


def test_manager_is_built_once_until_reset() -> None:
    manager = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is manager
    plugins.reset_plugin_manager()
    assert plugins.get_plugin_manager() is not manager


def test_builtin_plugins_are_registered_first() -> None:
    names = [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]
    assert names[: len(plugins.BUILTIN_PLUGINS)] == list(plugins.BUILTIN_PLUGINS)


# -- pgflow_register_executors ---------------------------------------------------------------------


def test_builtin_executors_are_available() -> None:
    executors = plugins.available_executors()
    assert set(executors) == BUILTIN_EXECUTORS
    assert executors["thread"] is ThreadExecutor
    for name, factory in executors.items():
        assert isinstance(factory, type) and issubclass(factory, Executor)
        assert factory.name == name


def test_create_executor_builds_the_named_one() -> None:
    executor = plugins.create_executor("thread", concurrency=3, resolve_step=resolve_nothing)
    assert isinstance(executor, ThreadExecutor)
    assert executor.concurrency == 3


def test_unknown_executor_lists_the_known_ones() -> None:
    with pytest.raises(PluginError) as caught:
        plugins.create_executor("threads", concurrency=1, resolve_step=resolve_nothing)
    message = str(caught.value)
    assert "unknown executor 'threads'" in message
    assert "asyncio, inline, process, thread" in message


def test_plugin_registers_an_executor() -> None:
    plugins.get_plugin_manager().register(ExecutorPlugin(), name="tiny-plugin")
    assert set(plugins.available_executors()) == BUILTIN_EXECUTORS | {"tiny"}
    executor = plugins.create_executor("tiny", concurrency=1, resolve_step=resolve_nothing)
    assert type(executor) is TinyExecutor


def test_an_executor_name_registered_twice_names_both_plugins() -> None:
    class Impostor:
        @hookimpl
        def pgflow_register_executors(self, register: RegisterExecutor) -> None:
            register("thread", TinyExecutor)

    plugins.get_plugin_manager().register(Impostor(), name="impostor")
    with pytest.raises(PluginError) as caught:
        plugins.available_executors()
    message = str(caught.value)
    assert "'thread'" in message
    assert "'pgflow.plugins.builtin'" in message and "'impostor'" in message


def test_an_empty_executor_name_is_refused() -> None:
    class Nameless:
        @hookimpl
        def pgflow_register_executors(self, register: RegisterExecutor) -> None:
            register("", TinyExecutor)

    plugins.get_plugin_manager().register(Nameless(), name="nameless")
    with pytest.raises(PluginError, match="plugin 'nameless' registered an executor under the"):
        plugins.available_executors()


# -- pgflow_register_serializers -------------------------------------------------------------------


class ReprSerializer:
    def encode(self, value: Any) -> bytes:
        return repr(value).encode()

    def decode(self, data: bytes | str) -> Any:
        return data


def test_plugin_registers_a_serializer() -> None:
    serializer = ReprSerializer()

    class SerializerPlugin:
        @hookimpl
        def pgflow_register_serializers(self, register: RegisterSerializer) -> None:
            register("repr", serializer)

    # the builtin plugin provides the default
    assert set(plugins.available_serializers()) == {"msgspec"}
    plugins.get_plugin_manager().register(SerializerPlugin(), name="serializer-plugin")
    found = plugins.available_serializers()
    assert set(found) == {"msgspec", "repr"}
    assert found["repr"] is serializer
    assert plugins.get_serializer("repr") is serializer
    assert found["repr"].encode([1]) == b"[1]"


# -- pgflow_event ----------------------------------------------------------------------------------


def test_events_reach_every_sink_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    received: list[Mapping[str, Any]] = []

    class BrokenSink:
        @hookimpl
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            raise RuntimeError("sink is down")

    class Sink:
        @hookimpl
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            received.append(event)

    assert not plugins.has_event_sinks()
    manager = plugins.get_plugin_manager()
    manager.register(Sink(), name="sink")
    manager.register(BrokenSink(), name="broken-sink")
    assert plugins.has_event_sinks()

    event = {"event_type": "run:completed", "run_id": "r1"}
    with caplog.at_level(logging.ERROR, logger="pgflow.plugins"):
        plugins.fire_event(event)
    assert received == [event]
    assert any(
        "'broken-sink' failed in pgflow_event" in r.getMessage() and r.exc_info
        for r in caplog.records
    )


# -- pgflow_worker_started / pgflow_worker_stopped -------------------------------------------------


def test_worker_lifecycle_hooks() -> None:
    calls: list[tuple[str, Any]] = []

    class Watcher:
        @hookimpl
        def pgflow_worker_started(self, worker_id: str, flows: Sequence[Flow]) -> None:
            calls.append(("started", (worker_id, [flow.slug for flow in flows])))

        @hookimpl
        def pgflow_worker_stopped(self, worker_id: str) -> None:
            calls.append(("stopped", worker_id))

    class IdOnly:
        # pluggy lets an implementation take only the arguments it needs.
        @hookimpl
        def pgflow_worker_started(self, worker_id: str) -> None:
            calls.append(("id only", worker_id))

    manager = plugins.get_plugin_manager()
    manager.register(Watcher(), name="watcher")
    manager.register(IdOnly(), name="id-only")
    plugins.fire_worker_started("w-1", [Flow("first_flow"), Flow("second_flow")])
    plugins.fire_worker_stopped("w-1")
    assert calls == [
        ("started", ("w-1", ["first_flow", "second_flow"])),
        ("id only", "w-1"),
        ("stopped", "w-1"),
    ]


# -- entry points and PGFLOW_DISABLE_PLUGINS -------------------------------------------------------


def fake_plugin_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def pgflow_register_executors(register: RegisterExecutor) -> None:
        register("tiny", TinyExecutor)

    module.pgflow_register_executors = pgflow_register_executors  # type: ignore[attr-defined]
    return module


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch, tiny=("fake_tiny_plugin", fake_plugin_module("fake_tiny_plugin")))
    assert "tiny" in plugins.available_executors()
    names = [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]
    assert names == [*plugins.BUILTIN_PLUGINS, "tiny"]


def test_disabled_entry_point_is_not_even_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(
        monkeypatch,
        broken=("no_such_module_for_pgflow_tests:plugin", None),
        tiny=("fake_tiny_plugin", fake_plugin_module("fake_tiny_plugin")),
    )
    monkeypatch.setenv(plugins.DISABLE_ENV, " broken , tiny")
    assert set(plugins.available_executors()) == BUILTIN_EXECUTORS


def test_disabling_the_builtin_plugin_leaves_no_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.DISABLE_ENV, "pgflow.plugins.builtin")
    assert plugins.available_executors() == {}
    with pytest.raises(PluginError, match=r"known executors: none.*PGFLOW_DISABLE_PLUGINS"):
        plugins.create_executor("thread", concurrency=1, resolve_step=resolve_nothing)


def test_disabling_an_unknown_plugin_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugins.DISABLE_ENV, "not-installed")
    with caplog.at_level(logging.WARNING, logger="pgflow.plugins"):
        plugins.get_plugin_manager()
    assert any("not-installed" in r.getMessage() for r in caplog.records)
    assert set(plugins.available_executors()) == BUILTIN_EXECUTORS


def test_entry_point_that_fails_to_import_says_how_to_disable_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_entry_points(monkeypatch, broken=("no_such_module_for_pgflow_tests:plugin", None))
    with pytest.raises(PluginError) as caught:
        plugins.get_plugin_manager()
    message = str(caught.value)
    assert "plugin 'broken'" in message and "no_such_module_for_pgflow_tests" in message
    assert "PGFLOW_DISABLE_PLUGINS=broken" in message


def test_misspelled_hook_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_typo_plugin")

    @hookimpl
    def pgflow_register_executor(register: RegisterExecutor) -> None:  # missing "s"
        raise AssertionError("never called")

    module.pgflow_register_executor = pgflow_register_executor  # type: ignore[attr-defined]
    use_entry_points(monkeypatch, typo=("fake_typo_plugin", module))
    with pytest.raises(PluginError, match=r"plugin 'typo' .* does not fit pgflow's hooks"):
        plugins.get_plugin_manager()


def test_two_entry_points_with_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = fake_plugin_module("fake_first"), fake_plugin_module("fake_second")
    entry_points = (
        importlib.metadata.EntryPoint(name="same", value="fake_first", group="pgflow"),
        importlib.metadata.EntryPoint(name="same", value="fake_second", group="pgflow"),
    )
    monkeypatch.setitem(sys.modules, "fake_first", first)
    monkeypatch.setitem(sys.modules, "fake_second", second)
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: entry_points)
    with pytest.raises(PluginError, match="two plugins are named 'same'"):
        plugins.get_plugin_manager()
