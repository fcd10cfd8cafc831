"""The codec by example: every rule of building inputs, for the Rust core and for its msgspec
fallback alike, and the encoding of outputs."""

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


@pytest.fixture(params=IMPLS, ids=IDS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def test_each_mode(impl: ModuleType) -> None:
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


def test_tasks_never_share_objects(impl: ModuleType) -> None:
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
def test_errors_name_the_task(impl: ModuleType, spec: Any, error: type[Exception]) -> None:
    for build in (impl.assemble_and_decode, impl.assemble_inputs):
        with pytest.raises(error) as caught:
            build([(MODE_FLOW_INPUT, "r1", [], 0), spec], BLOBS)
        assert type(caught.value) is error
        assert caught.value.position == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["{", "[1,]", "NaN", "Infinity", '"\\ud800"', '"\\x"', "1 2", ""])
def test_invalid_json(impl: ModuleType, text: str) -> None:
    with pytest.raises(InvalidJson):
        impl.decode_many([text])
    with pytest.raises(InvalidJson):
        impl.assemble_and_decode([(MODE_FLOW_INPUT, "r", [], 0)], {"r:": text})


def test_values_that_json_allows(impl: ModuleType) -> None:
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


def test_nesting_limit(impl: ModuleType) -> None:
    def deep(depth: int) -> str:
        return "[" * depth + "1" + "]" * depth

    assert impl.decode_many([deep(MAX_DEPTH)])
    with pytest.raises(InvalidJson):
        impl.decode_many([deep(MAX_DEPTH + 1)])
    # an empty innermost array holds no value: it counts as a scalar
    assert impl.decode_many(["[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)])
    # a map parent's elements are decoded one by one: the parent may be one level deeper
    assert impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": deep(MAX_DEPTH + 1)})
    with pytest.raises(InvalidJson):
        impl.assemble_and_decode([(MODE_MAP, "r", [], 0)], {"r:": deep(MAX_DEPTH + 2)})


def test_malformed_specs_are_type_errors(impl: ModuleType) -> None:
    if impl is fallback:
        pytest.skip("the fallback trusts its caller, the worker")
    with pytest.raises(TypeError):
        impl.assemble_and_decode([("x",)], BLOBS)
    with pytest.raises(TypeError):
        impl.decode_many([3])


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
