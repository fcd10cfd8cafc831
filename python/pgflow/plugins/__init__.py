"""Plugins: the hook specs (`hookspecs`), the plugin manager (`manager`: builtins first, then
entry points in group `pgflow`), the builtin registrations (`builtin`) and the event relay
(`events`). Plugin authors import `hookimpl` from `pgflow.hooks`; see docs/plugins.md."""

from __future__ import annotations

from pgflow.errors import PluginError
from pgflow.plugins.manager import (
    BUILTIN_PLUGINS,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    PLUGINS_ENV,
    PluginFailure,
    PluginInfo,
    available_executors,
    available_serializers,
    available_type_adapters,
    create_executor,
    describe_plugins,
    fire_event,
    fire_worker_started,
    fire_worker_stopped,
    get_plugin_manager,
    get_serializer,
    has_event_sinks,
    reset_plugin_manager,
    run_headers,
    task_hooks,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "available_executors",
    "available_serializers",
    "available_type_adapters",
    "create_executor",
    "describe_plugins",
    "fire_event",
    "fire_worker_started",
    "fire_worker_stopped",
    "get_plugin_manager",
    "get_serializer",
    "has_event_sinks",
    "reset_plugin_manager",
    "run_headers",
    "task_hooks",
]
