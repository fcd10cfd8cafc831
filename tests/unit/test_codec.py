"""The codec by example: every rule of building inputs, with the Rust core and with its Python
fallback assembling them, and the encoding of outputs."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from types import ModuleType
from typing import Any

import msgspec
import pytest

from pgflow import codec
from pgflow.codec import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP, fallback
from pgflow.errors import (
    CoreError,
    ElementOutOfRange,
    InvalidJson,
    MissingBlob,
    NotAnArray,
    UnencodableValue,
)

try:
    from pgflow import _core
except ImportError:  # pragma: no cover - a checkout without the built extension
    _core = None  # type: ignore[assignment]

IMPLS = [fallback] + ([_core] if _core is not None else [])
IDS = ["msgspec"] + (["rust"] if _core is not None else [])

BLOBS = {
    "r1:": '{"url": "https://x", "n": 2}',
    "r1:fetch": '["a", "b", {"c": [1, 2]}]',
    "r1:score": "7",
    "r2:": "[10, 20, 30]",
    "r2:obj": '{"not": "array"}',
}


class Impl:
    """The codec with one assembler: the Rust core or the fallback."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def assemble_inputs(self, tasks: Any, blobs: Any) -> list[bytes]:
        return list(self.module.assemble_inputs(tasks, blobs))

    def assemble_and_decode(self, tasks: Any, blobs: Any) -> list[Any]:
        return codec.decode_many(self.module.assemble_inputs(tasks, blobs))

    def decode_many(self, raws: Any) -> list[Any]:
        return codec.decode_many(raws)


@pytest.fixture(params=IMPLS, ids=IDS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return Impl(request.param)


def test_each_mode(impl: Impl) -> None:
    specs = [
        (MODE_FLOW_INPUT, "r1", [], 0),
        (MODE_DEPS, "r1", ["fetch", "score"], 0),
        (MODE_DEPS, "r1", ["fetch", "skipped"], 0),
        (MODE_DEPS, "r1", [], 0),
        (MODE_MAP, "r1", ["fetch"], 2),
        (MODE_MAP, "r2", [], 1),
    ]
    assert impl.assemble_and_decode(specs, BLOBS) == [
        {"url": "https://x", "n": 2},
        {"fetch": ["a", "b", {"c": [1, 2]}], "score": 7},
        {"fetch": ["a", "b", {"c": [1, 2]}]},
        {},
        {"c": [1, 2]},
        20,
    ]
    raws = impl.assemble_inputs(specs, BLOBS)
    assert [msgspec.json.decode(r) for r in raws] == impl.assemble_and_decode(specs, BLOBS)
    assert raws[4] == b'{"c": [1, 2]}' or msgspec.json.decode(raws[4]) == {"c": [1, 2]}


def test_tasks_never_share_objects(impl: Impl) -> None:
    specs = [
        (MODE_FLOW_INPUT, "r1", [], 0),
        (MODE_FLOW_INPUT, "r1", [], 0),
        (MODE_DEPS, "r1", ["fetch"], 0),
        (MODE_DEPS, "r1", ["fetch"], 0),
        (MODE_MAP, "r1", ["fetch"], 2),
        (MODE_MAP, "r1", ["fetch"], 2),
    ]
    a, b, c, d, e, f = impl.assemble_and_decode(specs, BLOBS)
    assert a == b and a is not b
    assert c["fetch"] is not d["fetch"]
    assert e == f and e is not f


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ((MODE_FLOW_INPUT, "nobody", [], 0), MissingBlob),
        ((MODE_MAP, "r1", ["missing"], 0), MissingBlob),
        ((MODE_MAP, "r2", ["obj"], 0), NotAnArray),
        ((MODE_MAP, "r1", ["score"], 0), NotAnArray),
        ((MODE_MAP, "r2", [], 3), ElementOutOfRange),
        ((MODE_MAP, "r2", [], -1), ElementOutOfRange),
        ((7, "r1", [], 0), CoreError),
    ],
)
def test_errors_name_the_task(impl: Impl, spec: Any, error: type[Exception]) -> None:
    for build in (impl.assemble_and_decode, impl.assemble_inputs):
        with pytest.raises(error) as caught:
            build([(MODE_FLOW_INPUT, "r1", [], 0), spec], BLOBS)
        assert type(caught.value) is error
        assert caught.value.position == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["{", "[1,]", "NaN", "Infinity", '"\\ud800"', '"\\x"', "1 2", ""])
def test_invalid_json(impl: Impl, text: str) -> None:
    with pytest.raises(InvalidJson):
        impl.decode_many([text])
    with pytest.raises(InvalidJson):
        impl.assemble_and_decode([(MODE_FLOW_INPUT, "r", [], 0)], {"r:": text})


def test_values_that_json_allows(impl: Impl) -> None:
    texts = [
        "1" + "0" * 60,
        "-" + "9" * 40,
        "1e400",
        "-0.0",
        "1.5e-320",
        '"\\ud83d\\ude00"',
        '"a\\u0000b"',
        '{"a": 1, "a": 2}',
        " \t\n 1 \r\n",
        '"é\\n\\"\\\\"',
    ]
    assert impl.decode_many(texts) == [
        10**60,
        -int("9" * 40),
        float("inf"),
        -0.0,
        1.5e-320,
        "😀",
        "a\x00b",
        {"a": 2},
        1,
        'é\n"\\',
    ]
    assert impl.decode_many([b"[1]"]) == [[1]]


def test_nesting_limit_of_map_parents(impl: Impl) -> None:
    def deep(depth: int) -> str:
        return "[" * depth + "1" + "]" * depth

    # each element of a map parent may nest MAX_DEPTH deep; an empty array counts as a scalar
    assert impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": deep(MAX_DEPTH + 1)})
    empty = "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2)
    assert impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": empty})
    with pytest.raises(InvalidJson):
        impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": deep(MAX_DEPTH + 2)})
    with pytest.raises(InvalidJson):  # not an array, and too deep: too deep wins
        impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": '{"a":' * 201 + "1" + "}" * 201})
    # other inputs are msgspec's: deeper is fine
    assert impl.decode_many([deep(MAX_DEPTH * 2)])


def test_malformed_specs_are_type_errors(impl: Impl) -> None:
    if impl.module is fallback:
        pytest.skip("the fallback trusts its caller, the worker")
    with pytest.raises(TypeError):
        impl.assemble_inputs([("x",)], BLOBS)


# -- encoding ---------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    point: Point
    tags: list[str]


def test_outputs_are_encoded_once_with_their_types() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    value = {
        "box": Box(Point(1, 2), ["a"]),
        "color": Color.RED,
        "when": when,
        "id": uuid.UUID(int=1),
        "price": decimal.Decimal("1.50"),
        "keys": {1: "one"},
    }
    assert msgspec.json.decode(codec.encode_value(value)) == {
        "box": {"point": {"x": 1, "y": 2}, "tags": ["a"]},
        "color": "red",
        "when": "2026-01-02T03:04:05Z",
        "id": "00000000-0000-0000-0000-000000000001",
        "price": "1.50",
        "keys": {"1": "one"},
    }
    assert codec.encode_outputs([1, None, "x"]) == b'[1,null,"x"]'


def test_non_finite_floats_become_null() -> None:
    assert codec.encode_value([float("nan"), float("inf")]) == b"[null,null]"


@pytest.mark.parametrize(
    "value",
    [object(), {"s": {1, object()}}, "a\x00b", {"k\x00": 1}, [["x\u0000"]]],
    ids=["object", "set-of-objects", "nul", "nul-key", "nested-nul"],
)
def test_unencodable_outputs(value: Any) -> None:
    with pytest.raises(UnencodableValue):
        codec.encode_value(value)
    with pytest.raises(UnencodableValue) as caught:
        codec.encode_outputs([1, value])
    assert caught.value.position == 1


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    assert codec.encode_value("\\u0000") == b'"\\\\u0000"'


def test_cycles_are_unencodable() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UnencodableValue):
        codec.encode_value(loop)
