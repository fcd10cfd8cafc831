"""The plugin manager: which plugins are active, and what they provide.

Plugins are registered in this order: the builtin plugins (`BUILTIN_PLUGINS`), then every entry
point in group `pgflow` of the installed distributions. The environment variable
`PGFLOW_DISABLE_PLUGINS` ("name,name") keeps the named plugins out: entry point names, or module
names for builtins. The manager is built once per process; `reset_plugin_manager()` rebuilds it
on next use (tests, or after changing the variable).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import pluggy

from pgflow.errors import PluginError
from pgflow.executors.base import Executor, ExecutorFactory, FlowInputLoader, StepResolver
from pgflow.plugins import hookspecs
from pgflow.plugins.hookspecs import Serializer
from pgflow.plugins.sinks import configured_sinks

if TYPE_CHECKING:
    from pgflow.flow.definition import Flow


logger = logging.getLogger("pgflow.plugins")

#: Modules registered as plugins before any entry point, in this order.
BUILTIN_PLUGINS: Final[tuple[str, ...]] = ("pgflow.plugins.builtin",)
ENTRY_POINT_GROUP: Final = "pgflow"
DISABLE_ENV: Final = "PGFLOW_DISABLE_PLUGINS"


_manager: pluggy.PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    manager = _manager
    if manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = _build_manager()
            manager = _manager
    return manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager; the next `get_plugin_manager()` builds a new one."""
    global _manager
    with _manager_lock:
        _manager = None


def _disabled_names() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _build_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("pgflow")
    manager.add_hookspecs(hookspecs)
    disabled = _disabled_names()
    for name in disabled:
        manager.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        if not manager.is_blocked(module_name):
            _register(manager, importlib.import_module(module_name), module_name, module_name)
    known = set(BUILTIN_PLUGINS)
    for name, sink in configured_sinks():  # the builtin event sinks the environment asks for
        known.add(name)
        if not manager.is_blocked(name):
            _register(manager, sink, name, name)
    for entry_point in _entry_points():
        name = entry_point.name
        known.add(name)
        where = _describe_entry_point(entry_point)
        if manager.is_blocked(name):
            continue
        if manager.has_plugin(name):
            raise PluginError(
                f"two plugins are named {name!r} (the second is {where}); uninstall one of them"
            )
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} ({where}) failed to load: {type(exc).__name__}: {exc}; "
                f"fix or uninstall it, or set {DISABLE_ENV}={name} to run without it"
            ) from exc
        _register(manager, plugin, name, where)
    unknown = disabled - known
    if unknown:
        logger.warning(
            "%s names plugins that are not installed: %s (installed: %s)",
            DISABLE_ENV,
            ", ".join(sorted(unknown)),
            ", ".join(sorted(known)),
        )
    return manager


def _describe_entry_point(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    origin = f" from distribution {dist.name!r}" if dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value}{origin}"


def _register(manager: pluggy.PluginManager, plugin: object, name: str, where: str) -> None:
    try:
        manager.register(plugin, name=name)
        # Hook implementations named like no spec are typos (or from a newer pgflow).
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        manager.unregister(name=name)
        raise PluginError(
            f"plugin {name!r} ({where}) does not fit pgflow's hooks: {exc}; see docs/plugins.md "
            f"for the hook names and signatures, or set {DISABLE_ENV}={name}"
        ) from exc


# -- calling hooks --------------------------------------------------------------------------------


def _implementations(hook_name: str) -> Iterator[pluggy.HookImpl]:
    caller: pluggy.HookCaller = getattr(get_plugin_manager().hook, hook_name)
    # Registration order: builtins first, so their names come first in listings.
    for impl in caller.get_hookimpls():
        if not (impl.hookwrapper or impl.wrapper):
            yield impl


def _call(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> None:
    # pluggy lets an implementation accept a subset of the spec's arguments, by name.
    impl.function(*(kwargs[name] for name in impl.argnames))


def _collect(hook_name: str, what: str) -> dict[str, Any]:
    """Call a `register(name, thing)` hook plugin by plugin, so duplicates name both sides."""
    found: dict[str, tuple[Any, str]] = {}
    for impl in _implementations(hook_name):
        plugin_name = impl.plugin_name

        def register(name: str, thing: Any, plugin_name: str = plugin_name) -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(
                    f"plugin {plugin_name!r} registered {what} under the name {name!r}; names "
                    "must be non-empty strings"
                )
            if name in found:
                raise PluginError(
                    f"{what} {name!r} is registered by two plugins, {found[name][1]!r} and "
                    f"{plugin_name!r}; uninstall one of them or set {DISABLE_ENV} to disable it"
                )
            found[name] = (thing, plugin_name)

        _call(impl, {"register": register})
    return {name: thing for name, (thing, _) in found.items()}


def _fire(hook_name: str, kwargs: Mapping[str, Any]) -> None:
    for impl in _implementations(hook_name):
        try:
            _call(impl, kwargs)
        except Exception:
            # One broken plugin must not stop the others, nor the worker that notifies them.
            logger.exception("plugin %r failed in %s", impl.plugin_name, hook_name)


# -- what plugins provide -------------------------------------------------------------------------


def available_executors() -> dict[str, ExecutorFactory]:
    """Executor factories by name, from every active plugin."""
    return _collect("pgflow_register_executors", "an executor")


def available_serializers() -> dict[str, Serializer]:
    """Serializers by name, from every active plugin."""
    return _collect("pgflow_register_serializers", "a serializer")


def create_executor(
    name: str,
    *,
    concurrency: int,
    resolve_step: StepResolver,
    load_flow_input: FlowInputLoader | None = None,
) -> Executor:
    """Build the executor registered as `name`; raises `PluginError` listing the known names
    when there is none."""
    return executor_factory(name)(
        concurrency=concurrency,
        resolve_step=resolve_step,
        load_flow_input=load_flow_input,
    )


def executor_factory(name: str) -> ExecutorFactory:
    """The factory registered as `name` (so a name can be checked before any work starts);
    raises `PluginError` listing the known names when there is none."""
    factories = available_executors()
    factory = factories.get(name)
    if factory is None:
        known = ", ".join(sorted(factories)) or (
            f"none: every plugin that provides one is disabled (check {DISABLE_ENV})"
        )
        raise PluginError(
            f"unknown executor {name!r}; known executors: {known}. Plugins can add executors "
            "(see docs/plugins.md)"
        )
    return factory


def has_event_sinks() -> bool:
    """Whether any plugin receives events (when none does, events need not be delivered)."""
    return any(True for _ in _implementations("pgflow_event"))


def fire_event(event: Mapping[str, Any]) -> None:
    """Hand one event to every sink; a failing sink is logged and skipped."""
    _fire("pgflow_event", {"event": event})


def fire_worker_started(worker_id: str, flows: Sequence[Flow]) -> None:
    _fire("pgflow_worker_started", {"worker_id": worker_id, "flows": flows})


def fire_worker_stopped(worker_id: str) -> None:
    _fire("pgflow_worker_stopped", {"worker_id": worker_id})
