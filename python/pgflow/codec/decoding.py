"""JSON text to Python values, for both codec paths: msgspec, which builds Python objects
faster than the alternatives measured (benches/bench_core.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from pgflow.errors import InvalidJson

_decoder: Final = msgspec.json.Decoder()


def decode_json(raw: bytes | str) -> Any:
    """One JSON text to Python values, by msgspec (which stops at 64-bit integers: a larger one
    is left to Python's own parser). Raises `ValueError` for text that is not JSON."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError as exc:
        raise ValueError(str(exc)) from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_many(raws: Iterable[bytes | str]) -> list[Any]:
    """Each JSON text decoded; `InvalidJson` names the position of the first that is not JSON."""
    values: list[Any] = []
    for position, raw in enumerate(raws):
        try:
            values.append(decode_json(raw))
        except ValueError as exc:
            raise InvalidJson(
                f"task {position}: the input is not valid JSON: {exc}", position=position
            ) from None
    return values
