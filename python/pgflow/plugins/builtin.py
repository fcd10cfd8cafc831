"""The plugin that registers pgflow's own executors and its default serializer (listed in
`pgflow.plugins.BUILTIN_PLUGINS`).

Disable it with `PGFLOW_DISABLE_PLUGINS=pgflow.plugins.builtin` to offer only the
executors of installed plugins.
"""

from __future__ import annotations

from pgflow.codec import DEFAULT_SERIALIZER, MsgspecSerializer
from pgflow.executors.asyncio_exec import AsyncioExecutor
from pgflow.executors.inline import InlineExecutor
from pgflow.executors.process import ProcessExecutor
from pgflow.executors.thread import ThreadExecutor
from pgflow.plugins.hookspecs import RegisterExecutor, RegisterSerializer, hookimpl


@hookimpl
def pgflow_register_executors(register: RegisterExecutor) -> None:
    for executor in (ThreadExecutor, ProcessExecutor, AsyncioExecutor, InlineExecutor):
        register(executor.name, executor)


@hookimpl
def pgflow_register_serializers(register: RegisterSerializer) -> None:
    register(DEFAULT_SERIALIZER, MsgspecSerializer())
