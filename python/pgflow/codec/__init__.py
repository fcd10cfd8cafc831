"""The hot-path functions, from the Rust core when it is available, else from the twin.

Set ``PGFLOW_NO_RUST=1`` before import to force the pure-Python twin (`pgflow.codec`), for
debugging or to compare. Both raise the exceptions of `pgflow.errors`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from pgflow.codec import twin
from pgflow.codec.twin import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP, Blobs, TaskSpec

__all__ = [
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "MODE_DEPS",
    "MODE_FLOW_INPUT",
    "MODE_MAP",
    "RUST_AVAILABLE",
    "Blobs",
    "TaskSpec",
    "assemble_and_decode",
    "assemble_inputs",
    "decode_many",
    "encode_outputs",
    "encode_value",
    "use_rust",
]

_rust: ModuleType | None
try:
    from pgflow import _core as _rust
except ImportError:  # a source checkout without the built extension
    _rust = None

RUST_AVAILABLE: bool = _rust is not None


def _rust_disabled() -> bool:
    return os.environ.get("PGFLOW_NO_RUST", "").strip().lower() in {"1", "true", "yes", "on"}


_USE_RUST: bool = RUST_AVAILABLE and not _rust_disabled()
_impl: ModuleType = _rust if _USE_RUST and _rust is not None else twin

IMPLEMENTATION: str = "rust" if _USE_RUST else "python"


def use_rust() -> bool:
    """Whether this process uses the Rust core (decided at import)."""
    return _USE_RUST


assemble_inputs: Callable[[Iterable[TaskSpec], Blobs], list[bytes]] = _impl.assemble_inputs
assemble_and_decode: Callable[[Iterable[TaskSpec], Blobs], list[Any]] = _impl.assemble_and_decode
decode_many: Callable[[Iterable[bytes | str]], list[Any]] = _impl.decode_many
encode_outputs: Callable[[Iterable[Any]], str] = _impl.encode_outputs
encode_value: Callable[[Any], str] = _impl.encode_value
