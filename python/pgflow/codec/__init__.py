"""The hot path's JSON: handler inputs built from a claimed batch, and handler outputs encoded.

Raw inputs are assembled by the Rust core `pgflow._core` when it is built, else by the Python
fallback (`PGFLOW_NO_RUST=1` forces it); both raise the exceptions of `pgflow.errors`. msgspec
does the decoding (to Python values, or straight into a typed handler's type) and the encoding,
with one reused `Encoder` that writes Structs, dataclasses, enums, datetimes, UUIDs and Decimals
directly: it measured faster than the alternatives (benches/bench_core.py). Values of other types
go to `encode_unknown`, which asks the type adapters plugins register (installed here by the
plugins layer, `use_unknown_encoder`): msgspec calls it only for types it does not know, so the
values it writes itself cost nothing more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Final

import msgspec

from pgflow.codec import fallback
from pgflow.codec.decoding import decode_json, decode_many
from pgflow.codec.fallback import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP, Blobs, TaskSpec
from pgflow.errors import UnencodableValue

__all__ = [
    "DEFAULT_SERIALIZER",
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "MODE_DEPS",
    "MODE_FLOW_INPUT",
    "MODE_MAP",
    "RUST_AVAILABLE",
    "Blobs",
    "MsgspecSerializer",
    "TaskSpec",
    "assemble_and_decode",
    "assemble_inputs",
    "check_json",
    "decode_json",
    "decode_many",
    "encode_outputs",
    "encode_unknown",
    "encode_value",
    "use_rust",
    "use_unknown_encoder",
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
_impl: ModuleType = _rust if _USE_RUST and _rust is not None else fallback

IMPLEMENTATION: str = "rust" if _USE_RUST else "python"


def use_rust() -> bool:
    """Whether this process assembles inputs with the Rust core (decided at import)."""
    return _USE_RUST


assemble_inputs: Callable[[Iterable[TaskSpec], Blobs], list[bytes]] = _impl.assemble_inputs


def assemble_and_decode(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[Any]:
    """The handler input of each task as Python values; tasks never share objects."""
    return decode_many(assemble_inputs(tasks, blobs))


# -- outputs ----------------------------------------------------------------------------------

UnknownEncoder = Callable[[Any], Any]
"""`value -> a value msgspec can write`, for a value of a type msgspec does not know; raises
`TypeError` when nothing knows it."""

_unknown_encoder: UnknownEncoder | None = None


def use_unknown_encoder(encoder: UnknownEncoder) -> None:
    """Install what turns values of types msgspec does not know into ones it does (the plugins
    layer installs its type adapters' encoders)."""
    global _unknown_encoder
    _unknown_encoder = encoder


def encode_unknown(value: Any) -> Any:
    """msgspec's `enc_hook`: a value of a type msgspec cannot write, as one it can."""
    encoder = _unknown_encoder
    if encoder is None:
        # msgspec's own words when it has no hook
        raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")
    return encoder(value)


_encoder: Final = msgspec.json.Encoder(enc_hook=encode_unknown)
# the escape of U+0000, which jsonb refuses to store: not preceded by an escaped backslash
_NUL_ESCAPE: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encode_value(value: Any) -> bytes:
    """One JSON text. Raises `UnencodableValue` for a value msgspec cannot write, and for text
    holding U+0000 (jsonb cannot store it). Non-finite floats become null, as JSON has none."""
    try:
        encoded = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise UnencodableValue(
            f"{exc}; use dicts, lists, strings, numbers, booleans, None, msgspec Structs, "
            "dataclasses, enums, datetimes, UUIDs or Decimals",
            type_name=type(value).__name__,
        ) from None
    if b"\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        raise UnencodableValue(
            "a string holds the character U+0000, which PostgreSQL's jsonb cannot store",
            type_name=type(value).__name__,
        )
    return encoded


def encode_outputs(values: Sequence[Any]) -> bytes:
    """One JSON array text of the values; an error names the failing value's position."""
    try:
        return encode_value(list(values))
    except UnencodableValue:
        pass
    for position, value in enumerate(values):
        try:
            encode_value(value)
        except UnencodableValue as exc:
            exc.position = position
            raise
    raise AssertionError("encoding failed for the batch but for no value alone")


def check_json(data: bytes | str, what: str = "the value") -> bytes:
    """`data` as bytes when it is one JSON text PostgreSQL's jsonb can store; `UnencodableValue`
    otherwise (what a serializer plugin writes is checked with this before it is stored)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UnencodableValue(f"{what} is not one JSON text: {exc}", type_name="bytes") from None
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):
        raise UnencodableValue(
            f"{what} holds the character U+0000, which PostgreSQL's jsonb cannot store",
            type_name="bytes",
        )
    return raw


#: The serializer a flow uses when it names none.
DEFAULT_SERIALIZER: Final = "msgspec"


class MsgspecSerializer:
    """The default serializer: msgspec's JSON, which writes Structs, dataclasses, enums,
    datetimes, dates, UUIDs and Decimals (as ISO strings, strings and numbers) and reads plain
    JSON values back (a typed handler gets them converted to its declared types)."""

    def encode(self, value: Any) -> bytes:
        return encode_value(value)

    def decode(self, data: bytes | str) -> Any:
        return decode_json(data)
