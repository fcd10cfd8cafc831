"""Exceptions of the hot-path core, shared by the Rust extension and its pure-Python twin.

They are defined once, here: `pgflow._core` imports this module and raises these very classes,
so `except InvalidJson:` behaves the same whichever implementation `pgflow.fastpath` selected.

Every error carries ``position``: the index, in the sequence the caller passed, of the task,
item or output that failed (``None`` when the error is not about one item). A worker can use it
to fail that one task and retry the rest of the batch.
"""

from __future__ import annotations

__all__ = [
    "CoreError",
    "ElementOutOfRange",
    "InvalidJson",
    "MissingBlob",
    "NotAnArray",
    "UnencodableValue",
]


class CoreError(ValueError):
    """Base class; raised as such for bad task specs (for example an unknown mode)."""

    position: int | None

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class InvalidJson(CoreError):
    """A blob or an item to decode is not valid JSON, or nests deeper than ``MAX_DEPTH``."""


class NotAnArray(CoreError):
    """A map task's parent blob is valid JSON but not an array."""


class ElementOutOfRange(CoreError):
    """A map task's ``task_index`` is negative or past the end of its parent array."""


class MissingBlob(CoreError):
    """The run input (flow-input or root map task) or map parent blob is absent."""


class UnencodableValue(CoreError):
    """A handler result cannot be stored as PostgreSQL jsonb.

    ``path`` locates the offending part inside the value (``$.items[3].when``) and
    ``type_name`` is its Python type's name.
    """

    path: str
    type_name: str

    def __init__(
        self,
        message: str,
        *,
        path: str = "$",
        type_name: str = "",
        position: int | None = None,
    ) -> None:
        super().__init__(message, position=position)
        self.path = path
        self.type_name = type_name
