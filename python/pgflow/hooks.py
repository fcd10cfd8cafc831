"""What plugin authors import: `hookimpl` and the types of the registration callbacks.

    from pgflow.hooks import hookimpl

    @hookimpl
    def pgflow_register_executors(register):
        register("trio", TrioExecutor)

The hook specifications themselves live in `pgflow.plugins.hookspecs`; docs/plugins.md lists
every hook with its signature.
"""

from __future__ import annotations

from pgflow.plugins.hookspecs import (
    InputConverter,
    RegisterExecutor,
    RegisterSerializer,
    RegisterTypeAdapter,
    Serializer,
    TypeAdapter,
    hookimpl,
    hookspec,
)

__all__ = [
    "InputConverter",
    "RegisterExecutor",
    "RegisterSerializer",
    "RegisterTypeAdapter",
    "Serializer",
    "TypeAdapter",
    "hookimpl",
    "hookspec",
]
