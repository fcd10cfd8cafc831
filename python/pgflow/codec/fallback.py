"""`assemble_inputs` in plain Python and msgspec, used when the Rust core is not built or
`PGFLOW_NO_RUST=1`: the same raw inputs and exception classes as `pgflow._core` (property tests
compare them). The Rust core is faster on map parents, which it indexes by skipping over their
elements instead of decoding and re-encoding them, and it runs without the GIL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from pgflow.codec.decoding import decode_json
from pgflow.errors import CoreError, ElementOutOfRange, InvalidJson, MissingBlob, NotAnArray

MODE_FLOW_INPUT: Final = 0
MODE_DEPS: Final = 1
MODE_MAP: Final = 2
# jiter's nesting limit, which the Rust core's indexing of a map parent has: each element may
# nest this many arrays/objects that hold values (an empty one counts as a scalar)
MAX_DEPTH: Final = 200

TaskSpec = tuple[int, str, Sequence[str], int]
Blobs = Mapping[str, str | bytes]

_encoder: Final = msgspec.json.Encoder()


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _nests_deeper(text: bytes, value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (as jiter counts); only a text with that many
    brackets can, so most texts are not walked at all."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item if isinstance(item, list) else item.values()
        if not children:
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((c, depth) for c in children if isinstance(c, (list, dict)))
    return False


def _parent(text: bytes, key: str, position: int) -> list[Any]:
    try:
        parent = decode_json(text)
    except ValueError as exc:
        raise InvalidJson(
            f"task {position}: blob '{key}' is not valid JSON: {exc}", position=position
        ) from None
    # the Rust core reads the parent's elements one by one: each may nest MAX_DEPTH deep
    limit = MAX_DEPTH + 1 if isinstance(parent, list) else MAX_DEPTH
    if isinstance(parent, (list, dict)) and _nests_deeper(text, parent, limit):
        raise InvalidJson(f"task {position}: blob '{key}' nests too deep", position=position)
    if not isinstance(parent, list):
        kind = "an object" if isinstance(parent, dict) else type(parent).__name__
        raise NotAnArray(
            f"task {position}: map parent '{key}' is {kind}, not an array", position=position
        )
    return parent


def _blob(blobs: Blobs, key: str, position: int, role: str) -> bytes:
    try:
        return _bytes(blobs[key])
    except KeyError:
        raise MissingBlob(
            f"task {position}: the {role} '{key}' was not sent", position=position
        ) from None


def assemble_inputs(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[bytes]:
    """The handler input of each task as raw JSON."""
    parents: dict[str, list[Any]] = {}
    raws: list[bytes] = []
    for position, (mode, run_id, deps, index) in enumerate(tasks):
        if mode == MODE_FLOW_INPUT:
            raws.append(_blob(blobs, f"{run_id}:", position, "run input").strip())
        elif mode == MODE_DEPS:
            parts = [
                _encoder.encode(d) + b":" + _bytes(blobs[f"{run_id}:{d}"]).strip()
                for d in deps
                if f"{run_id}:{d}" in blobs
            ]
            raws.append(b"{" + b",".join(parts) + b"}")
        elif mode == MODE_MAP:
            key = f"{run_id}:{deps[0] if deps else ''}"
            if key not in parents:
                parents[key] = _parent(_blob(blobs, key, position, "map parent"), key, position)
            parent = parents[key]
            if not 0 <= index < len(parent):
                raise ElementOutOfRange(
                    f"task {position}: element {index} of map parent '{key}' does not exist",
                    position=position,
                )
            raws.append(_encoder.encode(parent[index]))
        else:
            raise CoreError(
                f"task {position}: unknown mode {mode} (expected 0, 1 or 2)", position=position
            )
    return raws
