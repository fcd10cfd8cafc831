"""The plugin manager and every hook, with plugins defined in the tests."""

from __future__ import annotations

import importlib.metadata
import logging
import re
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
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
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


def test_the_run_headers_loader_goes_only_to_factories_that_take_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An executor plugin written before `load_run_headers` existed is still built (its
    handlers cannot read ctx.headers); one that takes it, by name or **kwargs, gets it."""
    built: dict[str, dict[str, Any]] = {}

    def old_style(*, concurrency: int, resolve_step: Any, load_flow_input: Any = None) -> Executor:
        built["old"] = {"load_flow_input": load_flow_input}
        return TinyExecutor(concurrency=concurrency, resolve_step=resolve_step)

    def open_ended(**kwargs: Any) -> Executor:
        built["open"] = kwargs
        return TinyExecutor(**kwargs)

    class Factories:
        @hookimpl
        def pgflow_register_executors(self, register: RegisterExecutor) -> None:
            register("old", old_style)
            register("open", open_ended)

    def load_input(run_id: str) -> Any:
        return {}

    def load_headers(run_id: str) -> Mapping[str, str]:
        return {}

    plugins.get_plugin_manager().register(Factories(), name="factories")
    with caplog.at_level(logging.INFO, logger="pgflow.plugins"):
        old = plugins.create_executor(
            "old",
            concurrency=1,
            resolve_step=resolve_nothing,
            load_flow_input=load_input,
            load_run_headers=load_headers,
        )
    assert built["old"] == {"load_flow_input": load_input}
    assert old.load_run_headers is None
    assert "executor 'old' does not take `load_run_headers`" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pgflow.plugins"):
        opened = plugins.create_executor(
            "open", concurrency=1, resolve_step=resolve_nothing, load_run_headers=load_headers
        )
        builtin = plugins.create_executor(
            "thread", concurrency=1, resolve_step=resolve_nothing, load_run_headers=load_headers
        )
    assert built["open"]["load_run_headers"] is load_headers
    assert opened.load_run_headers is load_headers
    assert builtin.load_run_headers is load_headers
    assert caplog.text == ""


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


def test_event_sinks_are_called_in_pluggy_order_tryfirst_and_trylast() -> None:
    order: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            order.append("first")

    class Plain:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            order.append(self.name)

    class Last:
        @hookimpl(trylast=True)
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            order.append("last")

    manager = plugins.get_plugin_manager()
    # registered in the order pluggy would call them last to first, to show the markers win
    manager.register(Last(), name="last")
    manager.register(Plain("older"), name="older")
    manager.register(First(), name="first")
    manager.register(Plain("newer"), name="newer")
    plugins.fire_event({"event_type": "run:started"})
    # pluggy calls the newest plain implementation first
    assert order == ["first", "newer", "older", "last"]


def test_a_wrapper_around_event_sinks_sees_the_call_and_the_result() -> None:
    seen: list[tuple[str, Any]] = []

    class Sink:
        @hookimpl
        def pgflow_event(self, event: Mapping[str, Any]) -> str:
            seen.append(("sink", event["event_type"]))
            return "delivered"

    class Broken:
        @hookimpl
        def pgflow_event(self, event: Mapping[str, Any]) -> None:
            raise RuntimeError("sink is down")

    class Timing:
        @hookimpl(wrapper=True)
        def pgflow_event(self, event: Mapping[str, Any]) -> Iterator[None]:
            seen.append(("before", event["event_type"]))
            result = yield
            seen.append(("after", result))
            return result

    manager = plugins.get_plugin_manager()
    manager.register(Sink(), name="sink")
    manager.register(Broken(), name="broken")
    manager.register(Timing(), name="timing")
    plugins.fire_event({"event_type": "step:completed"})
    # the broken sink (called first: newest) neither hides the sink nor reaches the wrapper
    assert seen == [
        ("before", "step:completed"),
        ("sink", "step:completed"),
        ("after", ["delivered"]),
    ]


def test_a_raising_wrapper_is_logged_and_does_not_reach_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BadWrapper:
        @hookimpl(wrapper=True)
        def pgflow_event(self, event: Mapping[str, Any]) -> Iterator[None]:
            raise RuntimeError("wrapper is broken")
            yield  # a generator, as wrappers are

    plugins.get_plugin_manager().register(BadWrapper(), name="bad-wrapper")
    with caplog.at_level(logging.ERROR, logger="pgflow.plugins"):
        plugins.fire_event({"event_type": "run:started"})
    assert any("a hook wrapper failed in pgflow_event" in r.getMessage() for r in caplog.records)


def test_registration_hooks_go_through_the_hook_caller() -> None:
    calls: list[str] = []

    class Watch:
        @hookimpl(wrapper=True)
        def pgflow_register_executors(self, register: RegisterExecutor) -> Iterator[None]:
            calls.append("wrapper")
            return (yield)

    manager = plugins.get_plugin_manager()
    manager.register(Watch(), name="watch")
    manager.register(ExecutorPlugin(), name="tiny-plugin")
    monitored: list[str] = []
    undo = manager.add_hookcall_monitoring(
        lambda name, impls, kwargs: monitored.append(name), lambda *_: None
    )
    try:
        assert "tiny" in plugins.available_executors()
    finally:
        undo()
    assert calls == ["wrapper"]
    assert monitored == ["pgflow_register_executors"]


# -- pgflow_worker_started / pgflow_worker_stopped -------------------------------------------------


def test_worker_lifecycle_hooks() -> None:
    calls: list[tuple[str, Any]] = []

    class Watcher:
        @hookimpl
        def pgflow_worker_started(
            self, workers: Mapping[str, str], flows: Sequence[Flow], dsn: str
        ) -> None:
            calls.append(("started", (dict(workers), [flow.slug for flow in flows], dsn)))

        @hookimpl
        def pgflow_worker_stopped(self, workers: Mapping[str, str]) -> None:
            calls.append(("stopped", dict(workers)))

    class IdsOnly:
        # pluggy lets an implementation take only the arguments it needs.
        @hookimpl
        def pgflow_worker_started(self, workers: Mapping[str, str]) -> None:
            calls.append(("ids only", sorted(workers.values())))

    manager = plugins.get_plugin_manager()
    manager.register(Watcher(), name="watcher")
    manager.register(IdsOnly(), name="ids-only")
    workers = {"first_flow": "w-1", "second_flow": "w-2"}
    plugins.fire_worker_started(
        workers, [Flow("first_flow"), Flow("second_flow")], "postgresql://db.example/pgflow"
    )
    plugins.fire_worker_stopped(workers)
    assert calls == [  # pluggy calls the newest plugin first
        ("ids only", ["w-1", "w-2"]),
        ("started", (workers, ["first_flow", "second_flow"], "postgresql://db.example/pgflow")),
        ("stopped", workers),
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


def failure_of(name: str) -> str:
    failure = plugins.get_plugin_manager().failures[name]
    assert failure.name == name
    return failure.error


def test_entry_point_that_fails_to_import_is_recorded_and_the_others_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_entry_points(
        monkeypatch,
        broken=("no_such_module_for_pgflow_tests:plugin", None),
        tiny=("fake_tiny_plugin", fake_plugin_module("fake_tiny_plugin")),
    )
    with caplog.at_level(logging.WARNING, logger="pgflow.plugins"):
        assert "tiny" in plugins.available_executors()
        plugins.available_executors()  # the manager is built once: one warning
    message = failure_of("broken")
    assert "plugin 'broken'" in message and "no_such_module_for_pgflow_tests" in message
    assert "PGFLOW_DISABLE_PLUGINS=broken" in message
    assert [r.getMessage() for r in caplog.records] == [message]
    # an executor nobody provides names what failed to load
    with pytest.raises(PluginError) as caught:
        plugins.create_executor("trio", concurrency=1, resolve_step=resolve_nothing)
    assert "unknown executor 'trio'" in str(caught.value)
    assert message in str(caught.value)


def test_misspelled_hook_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_typo_plugin")

    @hookimpl
    def pgflow_register_executor(register: RegisterExecutor) -> None:  # missing "s"
        raise AssertionError("never called")

    module.pgflow_register_executor = pgflow_register_executor  # type: ignore[attr-defined]
    use_entry_points(monkeypatch, typo=("fake_typo_plugin", module))
    assert re.search(r"plugin 'typo' .* does not fit pgflow's hooks", failure_of("typo"))
    assert not plugins.get_plugin_manager().has_plugin("typo")


def test_two_entry_points_with_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = fake_plugin_module("fake_first"), fake_plugin_module("fake_second")
    entry_points = (
        importlib.metadata.EntryPoint(name="same", value="fake_first", group="pgflow"),
        importlib.metadata.EntryPoint(name="same", value="fake_second", group="pgflow"),
    )
    monkeypatch.setitem(sys.modules, "fake_first", first)
    monkeypatch.setitem(sys.modules, "fake_second", second)
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: entry_points)
    assert "two plugins are named 'same'" in failure_of("same")
    # the first keeps working
    assert plugins.get_plugin_manager().get_plugin("same") is first


def test_describe_plugins_lists_names_registered_twice_under_both_plugins() -> None:
    class Impostor:
        @hookimpl
        def pgflow_register_executors(self, register: RegisterExecutor) -> None:
            register("thread", TinyExecutor)

    plugins.get_plugin_manager().register(Impostor(), name="impostor")
    found = {info.name: info for info in plugins.describe_plugins()}
    assert found["impostor"].executors == ("thread",)
    assert found["impostor"].origin == "registered by the program"
    assert "thread" in found["pgflow.plugins.builtin"].executors


# -- PGFLOW_PLUGINS ---------------------------------------------------------------------------------


def test_modules_listed_in_pgflow_plugins_are_registered_after_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_entry_points(monkeypatch, tiny=("fake_tiny_plugin", fake_plugin_module("fake_tiny_plugin")))
    listed = types.ModuleType("fake_listed_plugin")
    sinks: list[str] = []

    @hookimpl
    def pgflow_event(event: Mapping[str, Any]) -> None:
        sinks.append(event["event_type"])

    listed.pgflow_event = pgflow_event  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_listed_plugin", listed)
    monkeypatch.setenv(plugins.PLUGINS_ENV, " fake_listed_plugin ,")
    plugins.reset_plugin_manager()
    names = [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]
    assert names == [*plugins.BUILTIN_PLUGINS, "tiny", "fake_listed_plugin"]
    plugins.fire_event({"event_type": "run:started"})
    assert sinks == ["run:started"]


def test_a_module_in_pgflow_plugins_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.PLUGINS_ENV, "no_such_module_for_pgflow_tests")
    monkeypatch.setenv(plugins.DISABLE_ENV, "no_such_module_for_pgflow_tests")
    # a blocked name is listed with None for its plugin
    names = [name for name, plugin in plugins.get_plugin_manager().list_name_plugin() if plugin]
    assert names == list(plugins.BUILTIN_PLUGINS)


# -- task hooks -------------------------------------------------------------------------------------


def test_task_hooks_are_none_unless_a_plugin_implements_them() -> None:
    assert plugins.task_hooks() == plugins.manager.TaskHooks()
    seen: list[tuple[str, int]] = []

    class Watch:
        @hookimpl
        def pgflow_task_started(self, step_slug: str, attempt: int) -> None:
            seen.append((step_slug, attempt))

        @hookimpl(wrapper=True)
        def pgflow_task_claimed(self) -> Iterator[None]:
            return (yield)  # a wrapper alone implements nothing worth calling

    plugins.get_plugin_manager().register(Watch(), name="watch")
    hooks = plugins.task_hooks()
    assert hooks.claimed is None and hooks.finished is None and hooks.failed is None
    assert hooks.started is not None
    hooks.started(flow_slug="f", run_id="r", step_slug="s", task_index=0, attempt=2, worker_id="w")
    assert seen == [("s", 2)]
