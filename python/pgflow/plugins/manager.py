"""The plugin manager: which plugins are active, and what they provide.

Plugins are registered in this order: the builtin plugins (`BUILTIN_PLUGINS`), then every entry
point in group `pgflow` of the installed distributions, then the modules named by
`PGFLOW_PLUGINS` ("module,module", each registered under its module name). The environment variable
`PGFLOW_DISABLE_PLUGINS` ("name,name") keeps the named plugins out: entry point names, or module
names for builtins and `PGFLOW_PLUGINS`. The manager is built once per process; `reset_plugin_manager()` rebuilds it
on next use (tests, or after changing the variable).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pluggy

from pgflow import codec
from pgflow.errors import PluginError, one_line
from pgflow.executors.base import (
    Executor,
    ExecutorFactory,
    FlowInputLoader,
    RunHeadersLoader,
    StepResolver,
)
from pgflow.flow import handlers
from pgflow.flow.handlers import InputConverter, type_name
from pgflow.plugins import hookspecs
from pgflow.plugins.hookspecs import Serializer, TypeAdapter
from pgflow.plugins.sinks import configured_sinks

if TYPE_CHECKING:
    from pgflow.flow.definition import Flow


logger = logging.getLogger("pgflow.plugins")

#: Modules registered as plugins before any entry point, in this order.
BUILTIN_PLUGINS: Final[tuple[str, ...]] = ("pgflow.plugins.builtin",)
ENTRY_POINT_GROUP: Final = "pgflow"
DISABLE_ENV: Final = "PGFLOW_DISABLE_PLUGINS"
#: Modules to register as plugins after the entry points ("module,module"): plugins that are not
#: installed as a distribution (a project's own, tests, benchmarks).
PLUGINS_ENV: Final = "PGFLOW_PLUGINS"


_manager: PgflowPluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PgflowPluginManager:
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


def _listed_modules() -> list[str]:
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


@dataclass(frozen=True)
class _Candidate:
    """A plugin to register: its name, where it comes from (for people), how to load it."""

    name: str
    origin: str
    load: Callable[[], object]


def _candidates() -> list[_Candidate]:
    """Every plugin in the order of registration: builtins, entry points, then PGFLOW_PLUGINS."""
    found = [
        _Candidate(name, "builtin", functools.partial(importlib.import_module, name))
        for name in BUILTIN_PLUGINS
    ]
    # the builtin event sinks the environment asks for (PGFLOW_EVENTS_LOG, PGFLOW_EVENTS_JSONL)
    found += [
        _Candidate(
            name, "builtin event sink (set by the environment)", functools.partial(_same, sink)
        )
        for name, sink in configured_sinks()
    ]
    found += [_Candidate(ep.name, _describe_entry_point(ep), ep.load) for ep in _entry_points()]
    found += [
        _Candidate(
            name,
            f"module listed in {PLUGINS_ENV}",
            functools.partial(importlib.import_module, name),
        )
        for name in _listed_modules()
    ]
    return found


def _same(value: object) -> object:
    return value


def _build_manager() -> PgflowPluginManager:
    manager = PgflowPluginManager("pgflow")
    manager.add_hookspecs(hookspecs)
    disabled = _disabled_names()
    for name in disabled:
        manager.set_blocked(name)
    known: set[str] = set()
    for candidate in _candidates():
        name, where = candidate.name, candidate.origin
        known.add(name)
        if manager.is_blocked(name):
            manager.origins.setdefault(name, where)
            continue
        try:
            _load(manager, candidate)
        except PluginError as exc:
            # One broken plugin must not take the others down: it is listed (`pgflow plugins`)
            # and named when what it would have provided is asked for.
            manager.failures[name] = PluginFailure(name, where, str(exc))
            logger.warning("%s", exc)
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
    origin = f" from distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value}{origin}"


def _load(manager: PgflowPluginManager, candidate: _Candidate) -> None:
    name, where = candidate.name, candidate.origin
    how_to_skip = f"set {DISABLE_ENV}={name} to run without it"
    if manager.has_plugin(name) or name in manager.failures:
        raise PluginError(
            f"two plugins are named {name!r} (the second is {where}); uninstall one of them"
        )
    try:
        plugin = candidate.load()
    except Exception as exc:
        raise PluginError(
            f"plugin {name!r} ({where}) failed to load: {type(exc).__name__}: {exc}; "
            f"fix or uninstall it, or {how_to_skip}"
        ) from exc
    try:
        manager.register(plugin, name=name)
        # Hook implementations named like no spec are typos (or from a newer pgflow).
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if manager.has_plugin(name):
            manager.unregister(name=name)
        raise PluginError(
            f"plugin {name!r} ({where}) does not fit pgflow's hooks: {one_line(exc)}; see "
            f"docs/plugins.md for the hook names and signatures, or {how_to_skip}"
        ) from exc
    manager.origins[name] = where


# -- calling hooks --------------------------------------------------------------------------------
#
# Every hook is called through pluggy's hook caller (`manager.hook.<name>(...)`), so pluggy's
# order (LIFO, `tryfirst`/`trylast`), wrappers and tracing apply. What pgflow adds is done to each
# implementation once, when its plugin is registered (`PgflowPluginManager.register`):
#
# - notification hooks: an implementation that raises is logged with its plugin's name and
#   returns None, so the others still run and the worker never sees the exception;
# - registration hooks: the `register` callback an implementation receives knows which plugin it
#   is, so a name registered twice is reported naming both plugins.
#
# Wrappers (`wrapper=True`, `hookwrapper=True`) are left as they are: they see the call and its
# result. One that raises fails that one call, which `_notify` logs.


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be registered, and why (one line)."""

    name: str
    origin: str
    error: str


class PgflowPluginManager(pluggy.PluginManager):
    """pluggy's manager, which adapts each implementation as its plugin registers (see above),
    and remembers where each plugin came from and which failed to load."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        # where each plugin pgflow registered came from, for people (`pgflow plugins`)
        self.origins: dict[str, str] = {}
        self.failures: dict[str, PluginFailure] = {}
        # what writes each class msgspec cannot, as the type adapters said (None: nothing does)
        self.encoders: dict[type, Callable[[Any], Any] | None] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self.encoders.clear()  # a new plugin may know classes others did not
        plugin_name = super().register(plugin, name)
        if plugin_name is not None:
            for caller in self.get_hookcallers(plugin) or ():
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        _adapt(caller.name, impl)
        return plugin_name

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        self.encoders.clear()
        return super().unregister(plugin, name)


def _adapt(hook_name: str, impl: pluggy.HookImpl) -> None:
    function = impl.function
    plugin_name = impl.plugin_name
    adapted: Callable[..., object]
    if hook_name in hookspecs.REGISTRATION_HOOKS:
        if "register" not in impl.argnames:
            return  # takes no callback, registers nothing
        position = impl.argnames.index("register")

        @functools.wraps(function)
        def adapted(*args: object) -> object:
            registry = args[position]
            if isinstance(registry, _Registry):
                args = (*args[:position], registry.on_behalf_of(plugin_name), *args[position + 1 :])
            return function(*args)

    else:

        @functools.wraps(function)
        def adapted(*args: object) -> object:
            try:
                return function(*args)
            except Exception:
                # One broken plugin must not stop the others, nor the worker that notifies them.
                logger.exception("plugin %r failed in %s", plugin_name, hook_name)
                return None

    # HookImpl declares `function` Final for its users; pluggy itself reads it at each call, and
    # replacing it here is what keeps the call going through the hook caller.
    object.__setattr__(impl, "function", adapted)


def _hook(hook_name: str) -> pluggy.HookCaller:
    caller: pluggy.HookCaller = getattr(get_plugin_manager().hook, hook_name)
    return caller


def _implemented(caller: pluggy.HookCaller) -> bool:
    """Whether a plugin implements the hook (wrappers alone do nothing worth calling)."""
    return any(not (impl.wrapper or impl.hookwrapper) for impl in caller.get_hookimpls())


def _notify(caller: pluggy.HookCaller, **kwargs: Any) -> None:
    try:
        caller(**kwargs)
    except Exception:
        # only a wrapper can get here: implementations are guarded one by one
        logger.exception("a hook wrapper failed in %s", caller.name)


class _Registry:
    """The `register(name, thing)` callback of a registration hook, for one call of the hook.

    Each implementation gets `on_behalf_of(its plugin)`, so every registration knows its plugin.
    """

    def __init__(self, what: str, *, strict: bool = True) -> None:
        self.what = what
        # strict: a bad or duplicate name raises; else it is only recorded (listings)
        self.strict = strict
        self.found: dict[str, tuple[Any, str]] = {}
        self.by_plugin: dict[str, list[str]] = {}

    def on_behalf_of(self, plugin_name: str) -> Callable[[str, Any], None]:
        return functools.partial(self._add, plugin_name)

    def __call__(self, name: str, thing: Any) -> None:
        # a wrapper registering for itself: it has no implementation of its own to name
        self._add("(a hook wrapper)", name, thing)

    def _add(self, plugin_name: str, name: str, thing: Any) -> None:
        self.by_plugin.setdefault(plugin_name, []).append(str(name))
        if not self.strict:
            return
        if not isinstance(name, str) or not name.strip():
            raise PluginError(
                f"plugin {plugin_name!r} registered {self.what} under the name {name!r}; names "
                "must be non-empty strings"
            )
        if name in self.found:
            raise PluginError(
                f"{self.what} {name!r} is registered by two plugins, {self.found[name][1]!r} and "
                f"{plugin_name!r}; uninstall one of them or set {DISABLE_ENV} to disable it"
            )
        self.found[name] = (thing, plugin_name)


def _collect(hook_name: str, what: str) -> dict[str, Any]:
    """Call a `register(name, thing)` hook; what was registered, by name."""
    registry = _Registry(what)
    _hook(hook_name)(register=registry)
    return {name: thing for name, (thing, _) in registry.found.items()}


# -- what plugins provide -------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as `pgflow plugins` lists it."""

    name: str
    origin: str
    hooks: tuple[str, ...] = ()
    executors: tuple[str, ...] = ()
    serializers: tuple[str, ...] = ()
    type_adapters: tuple[str, ...] = ()
    disabled: bool = False
    error: str | None = None  # why it failed to load


def describe_plugins() -> list[PluginInfo]:
    """Every plugin in registration order (disabled ones too), then those that failed to load.

    Names registered twice are listed under both plugins rather than raised."""
    manager = get_plugin_manager()
    executors = _Registry("an executor", strict=False)
    _hook("pgflow_register_executors")(register=executors)
    serializers = _Registry("a serializer", strict=False)
    _hook("pgflow_register_serializers")(register=serializers)
    type_adapters = _Registry("a type adapter", strict=False)
    _hook("pgflow_register_type_adapters")(register=type_adapters)
    found = []
    for name, plugin in manager.list_name_plugin():
        origin = manager.origins.get(name, "registered by the program")
        if plugin is None:
            found.append(PluginInfo(name, origin, disabled=True))
            continue
        found.append(
            PluginInfo(
                name,
                origin,
                hooks=tuple(
                    sorted(caller.name for caller in manager.get_hookcallers(plugin) or ())
                ),
                executors=tuple(executors.by_plugin.get(name, ())),
                serializers=tuple(serializers.by_plugin.get(name, ())),
                type_adapters=tuple(type_adapters.by_plugin.get(name, ())),
            )
        )
    found += [
        PluginInfo(failure.name, failure.origin, error=failure.error)
        for failure in manager.failures.values()
    ]
    return found


def available_executors() -> dict[str, ExecutorFactory]:
    """Executor factories by name, from every active plugin."""
    return _collect("pgflow_register_executors", "an executor")


def available_serializers() -> dict[str, Serializer]:
    """Serializers by name, from every active plugin."""
    return _collect("pgflow_register_serializers", "a serializer")


def available_type_adapters() -> dict[str, TypeAdapter]:
    """Type adapters by name, from every active plugin, in pluggy's order (the first that
    handles a type wins)."""
    return _collect("pgflow_register_type_adapters", "a type adapter")


def input_converter(annotation: Any) -> InputConverter:
    """The converter of the first type adapter that handles a handler input annotation.

    Raises `LookupError` saying why when none does, and `PluginError` naming the adapter that
    failed. Installed in the flow layer (which asks only about what msgspec cannot build)."""
    adapters = available_type_adapters()
    for name, adapter in adapters.items():
        try:
            converter = adapter.input_converter(annotation)
        except Exception as exc:
            raise PluginError(
                f"type adapter {name!r}: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
        if converter is not None:
            return converter
    known = ", ".join(adapters) or "none"
    raise LookupError(
        f"no type adapter handles `{type_name(annotation)}`; type adapters: {known}"
        f"{_failures_note()}"
    )


def encode_unknown(value: Any) -> Any:
    """`value`, of a class msgspec cannot write, as JSON-shaped values by the first type adapter
    that knows its class (asked once per class); `TypeError` when none does, or it fails.
    Installed in the codec as msgspec's `enc_hook`, so the types msgspec writes never get here."""
    cls = type(value)
    encoders = get_plugin_manager().encoders
    try:
        encoder = encoders[cls]
    except KeyError:
        encoder = encoders[cls] = _find_encoder(cls)
    if encoder is None:
        raise TypeError(f"Encoding objects of type {cls.__name__} is unsupported")
    try:
        return encoder(value)
    except Exception as exc:
        # the codec turns a TypeError into a clear "has no JSON form" failure of the task
        raise TypeError(
            f"the type adapter for {cls.__name__} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc


def _find_encoder(cls: type) -> Callable[[Any], Any] | None:
    try:
        adapters = available_type_adapters()
    except PluginError as exc:
        raise TypeError(str(exc)) from exc
    for name, adapter in adapters.items():
        try:
            encoder = adapter.output_encoder(cls)
        except Exception as exc:
            raise TypeError(
                f"type adapter {name!r} failed on {cls.__name__}: {type(exc).__name__}: "
                f"{one_line(exc)}"
            ) from exc
        if encoder is not None:
            return encoder
    return None


# The layers below cannot import this one: they get the type adapters through these lookups.
# Importing pgflow imports this module, so they are in place before any flow is defined.
handlers.use_type_adapters(input_converter)
codec.use_unknown_encoder(encode_unknown)


def get_serializer(name: str) -> Serializer:
    """The serializer registered as `name`; raises `PluginError` listing the known names when
    there is none."""
    serializers = available_serializers()
    found = serializers.get(name)
    if found is None:
        known = ", ".join(sorted(serializers)) or (
            f"none: every plugin that provides one is disabled (check {DISABLE_ENV})"
        )
        raise PluginError(
            f"unknown serializer {name!r}; known serializers: {known}. Install the plugin that "
            "provides it (see docs/plugins.md)"
        )
    return found


def create_executor(
    name: str,
    *,
    concurrency: int,
    resolve_step: StepResolver,
    load_flow_input: FlowInputLoader | None = None,
    load_run_headers: RunHeadersLoader | None = None,
) -> Executor:
    """Build the executor registered as `name`; raises `PluginError` listing the known names
    when there is none.

    `load_run_headers` goes only to factories that accept it: executor plugins written before
    it existed keep working, their handlers' `ctx.headers` raising `RunHeadersUnavailable`.
    """
    factory = executor_factory(name)
    if load_run_headers is None:
        return factory(
            concurrency=concurrency, resolve_step=resolve_step, load_flow_input=load_flow_input
        )
    if not _accepts_keyword(factory, "load_run_headers"):
        logger.info(
            "executor %r does not take `load_run_headers`: its handlers cannot read ctx.headers "
            "(nor ctx.schedule, ctx.scheduled_at)",
            name,
        )
        return factory(
            concurrency=concurrency, resolve_step=resolve_step, load_flow_input=load_flow_input
        )
    # the protocol names only the arguments every factory takes
    extended: Callable[..., Executor] = factory
    return extended(
        concurrency=concurrency,
        resolve_step=resolve_step,
        load_flow_input=load_flow_input,
        load_run_headers=load_run_headers,
    )


def _accepts_keyword(factory: Callable[..., object], name: str) -> bool:
    """Whether `factory` can be called with keyword argument `name` (by name or `**kwargs`)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): do not risk it
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == name
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        for p in parameters
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
            f"(see docs/plugins.md){_failures_note()}"
        )
    return factory


def _failures_note() -> str:
    """What failed to load, for an error about something missing that it may have provided."""
    failures = get_plugin_manager().failures.values()
    if not failures:
        return ""
    return ". Plugins that failed to load (see `pgflow plugins`): " + "; ".join(
        failure.error for failure in failures
    )


def has_event_sinks() -> bool:
    """Whether any plugin receives events (when none does, events need not be delivered)."""
    return _implemented(_hook("pgflow_event"))


def fire_event(event: Mapping[str, Any]) -> None:
    """Hand one event to every sink; a failing sink is logged and skipped."""
    _notify(_hook("pgflow_event"), event=event)


def run_headers(flow_slug: str) -> dict[str, str]:
    """The headers plugins want kept with a run of `flow_slug` that this process starts: what
    every `pgflow_run_headers` implementation returned, merged (a name given twice keeps the
    value of the implementation called first, in pluggy's order). `{}`, without calling
    anything, when no plugin implements the hook. A value that is not a mapping of strings is
    logged and left out: a plugin's mistake must not stop a run from starting."""
    caller = _hook("pgflow_run_headers")
    if not _implemented(caller):
        return {}
    try:
        results = caller(flow_slug=flow_slug)
    except Exception:
        # only a wrapper can get here: implementations are guarded one by one
        logger.exception("a hook wrapper failed in pgflow_run_headers")
        return {}
    merged: dict[str, str] = {}
    for result in results:
        if not isinstance(result, Mapping):
            logger.warning(
                "pgflow_run_headers returned a %s, not a mapping of strings; left out",
                type(result).__name__,
            )
            continue
        for name, value in result.items():
            if isinstance(name, str) and name and isinstance(value, str):
                merged.setdefault(name, value)
            else:
                logger.warning(
                    "pgflow_run_headers: header %r = %r left out: names must be non-empty "
                    "strings and values strings",
                    name,
                    value,
                )
    return merged


TaskHook = Callable[..., None]


@dataclass(frozen=True, slots=True)
class TaskHooks:
    """The task hooks a worker calls (keyword arguments as in their specs); None for a hook no
    plugin implements, so the worker skips it without building its arguments."""

    claimed: TaskHook | None = None
    started: TaskHook | None = None
    finished: TaskHook | None = None
    failed: TaskHook | None = None


def task_hooks() -> TaskHooks:
    """The task hooks of the plugins active now (a worker asks once, when it starts)."""

    def bound(hook_name: str) -> TaskHook | None:
        caller = _hook(hook_name)
        return functools.partial(_notify, caller) if _implemented(caller) else None

    return TaskHooks(
        claimed=bound("pgflow_task_claimed"),
        started=bound("pgflow_task_started"),
        finished=bound("pgflow_task_finished"),
        failed=bound("pgflow_task_failed"),
    )


def fire_worker_started(workers: Mapping[str, str], flows: Sequence[Flow], dsn: str) -> None:
    """`workers`: flow slug -> worker id, of one worker process; `dsn`: its database."""
    _notify(_hook("pgflow_worker_started"), workers=workers, flows=flows, dsn=dsn)


def fire_worker_stopped(workers: Mapping[str, str]) -> None:
    _notify(_hook("pgflow_worker_stopped"), workers=workers)
