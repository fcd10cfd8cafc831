"""The hot-path functions in plain msgspec, used when the Rust core is not built or
`PGFLOW_NO_RUST=1`. Same functions, values and exception classes as `pgflow._core` (property
tests compare them); the Rust core is faster on large batches because it parses each blob once
and slices map elements without building the whole parent array."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from pgflow.errors import CoreError, ElementOutOfRange, InvalidJson, MissingBlob, NotAnArray

MODE_FLOW_INPUT: Final = 0
MODE_DEPS: Final = 1
MODE_MAP: Final = 2
MAX_DEPTH: Final = 200  # jiter's limit, under the Rust core (see _too_deep)

TaskSpec = tuple[int, str, Sequence[str], int]
Blobs = Mapping[str, str]

_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


# a JSON token that is not a bracket: a string, a number, true/false/null
_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[^\[\]{},:\s]+')
_INNERMOST: Final = re.compile(r"\[v\]|\{v\}")
_VALUES: Final = re.compile(r"v+")


def _too_deep(raw: bytes | str, value: Any, limit: int) -> bool:
    """Whether a value nests deeper than `limit` the way jiter counts: an array or object that
    holds values is one level more than its deepest value; an empty one counts as a scalar. At
    C speed: only a text with that many brackets can be too deep; its skeleton of brackets and
    value tokens is then collapsed one level per pass."""
    count = (
        raw.count(b"[") + raw.count(b"{")
        if isinstance(raw, bytes)
        else raw.count("[") + raw.count("{")
    )
    if count <= limit:
        return False
    skeleton = _TOKEN.sub("v", _encoder.encode(value).decode()).replace(",", "").replace(":", "")
    skeleton = _VALUES.sub("v", skeleton.replace("[]", "v").replace("{}", "v"))
    for _ in range(limit):
        skeleton = _VALUES.sub("v", _INNERMOST.sub("v", skeleton))
        if skeleton == "v":
            return False
    return skeleton != "v"


def _decode(raw: bytes | str, position: int, subject: str, limit: int = MAX_DEPTH) -> Any:
    try:
        value = _decoder.decode(raw)
    except msgspec.ValidationError:
        # an integer beyond 64 bits: Python's own parser builds it (JSON from jsonb has no NaN)
        value = json.loads(raw, parse_constant=_no_constant)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidJson(
            f"task {position}: {subject} is not valid JSON: {exc}", position=position
        ) from None
    if _too_deep(raw, value, limit):
        raise InvalidJson(
            f"task {position}: {subject} nests deeper than {limit}", position=position
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _blob(blobs: Blobs, key: str, position: int, role: str) -> str:
    try:
        return blobs[key]
    except KeyError:
        raise MissingBlob(
            f"task {position}: the {role} '{key}' was not sent", position=position
        ) from None


def _element(parent: Any, key: str, index: int, position: int) -> Any:
    if not isinstance(parent, list):
        kind = "an object" if isinstance(parent, dict) else type(parent).__name__
        raise NotAnArray(
            f"task {position}: map parent '{key}' is {kind}, not an array", position=position
        )
    if not 0 <= index < len(parent):
        raise ElementOutOfRange(
            f"task {position}: element {index} of map parent '{key}' does not exist",
            position=position,
        )
    return parent[index]


def _inputs(tasks: Iterable[TaskSpec], blobs: Blobs, raw: bool) -> list[Any]:
    parents: dict[str, Any] = {}
    handed_out: set[tuple[str, int]] = set()
    results: list[Any] = []
    for position, (mode, run_id, deps, index) in enumerate(tasks):
        if mode == MODE_FLOW_INPUT:
            text = _blob(blobs, f"{run_id}:", position, "run input")
            results.append(
                text.strip().encode() if raw else _decode(text, position, "the run input")
            )
        elif mode == MODE_DEPS:
            found = {d: blobs[f"{run_id}:{d}"] for d in deps if f"{run_id}:{d}" in blobs}
            if raw:
                parts = (f"{_encoder.encode(d).decode()}:{t.strip()}" for d, t in found.items())
                results.append(("{" + ",".join(parts) + "}").encode())
            else:
                results.append(
                    {d: _decode(t, position, f"blob '{run_id}:{d}'") for d, t in found.items()}
                )
        elif mode == MODE_MAP:
            key = f"{run_id}:{deps[0] if deps else ''}"
            if key not in parents:
                text = _blob(blobs, key, position, "map parent")
                # its elements are decoded one by one in the Rust core: each may nest MAX_DEPTH
                parent = _decode(text, position, f"blob '{key}'", MAX_DEPTH + 1)
                if not isinstance(parent, list) and _too_deep(text, parent, MAX_DEPTH):
                    raise InvalidJson(
                        f"task {position}: blob '{key}' nests too deep", position=position
                    )
                parents[key] = parent
            element = _element(parents[key], key, index, position)
            if raw:
                results.append(_encoder.encode(element))
            elif (key, index) in handed_out:  # the same element twice: a fresh copy
                results.append(_decoder.decode(_encoder.encode(element)))
            else:
                handed_out.add((key, index))
                results.append(element)
        else:
            raise CoreError(
                f"task {position}: unknown mode {mode} (expected 0, 1 or 2)", position=position
            )
    return results


def assemble_and_decode(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[Any]:
    """The handler input of each task, as Python values; tasks never share objects."""
    return _inputs(tasks, blobs, raw=False)


def assemble_inputs(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[bytes]:
    """The handler input of each task as raw JSON."""
    return _inputs(tasks, blobs, raw=True)


def decode_many(raws: Iterable[bytes | str]) -> list[Any]:
    """Each JSON text decoded to Python values."""
    return [_decode(raw, position, f"item {position}") for position, raw in enumerate(raws)]
