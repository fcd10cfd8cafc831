"""Encoding rules of the hot-path core, on the Rust core and its Python twin alike."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from types import ModuleType
from typing import Any

import pytest

from pgflow.codec import MAX_DEPTH
from pgflow.codec import twin as codec
from pgflow.errors import CoreError, UnencodableValue

try:
    from pgflow import _core
except ImportError:  # pragma: no cover - the extension is built in every supported setup
    _core = None  # type: ignore[assignment]

IMPLS = [pytest.param(codec, id="python")]
if _core is not None:
    IMPLS.append(pytest.param(_core, id="rust"))


def python_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Color(enum.IntEnum):
    RED = 1


class Tag(str, enum.Enum):
    A = "a"


class MyFloat(float):
    def __repr__(self) -> str:
        return "not used"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -17,
        2**63,
        -(2**70),
        0.0,
        -0.0,
        0.1,
        1e16,
        1e-5,
        123456.789,
        5e-324,
        562949953421312.25,  # a tie between two shortest forms: Python picks the even digit
        "",
        "plain",
        'quote " backslash \\ slash /',
        "\n\r\t\b\f\x01\x1f\x7f",
        "café 😀 \u2028",
        [],
        {},
        (1, 2),
        [1, [2, [3, {"a": ()}]]],
        {"b": 1, "a": 2},
        {"k": [None, True, 1.5, "x"]},
    ],
)
def test_encodes_exactly_like_python_json(impl: ModuleType, value: Any) -> None:
    assert impl.encode_value(value) == python_json(value)


@pytest.mark.parametrize("impl", IMPLS)
def test_subclasses_encode_as_their_base_type(impl: ModuleType) -> None:
    value = {"color": Color.RED, "tag": Tag.A, "f": MyFloat(2.5), "od": OrderedDict(z=1, a=2)}
    assert impl.encode_value(value) == '{"color":1,"tag":"a","f":2.5,"od":{"z":1,"a":2}}'
    od = OrderedDict(a=1, b=2)
    od.move_to_end("a")
    assert impl.encode_value(od) == '{"b":2,"a":1}'


@pytest.mark.parametrize("impl", IMPLS)
def test_integers_of_any_size(impl: ModuleType) -> None:
    huge = 3**20000
    text = impl.encode_value([huge, -huge])
    assert json.loads(text, parse_int=lambda s: s) == [_digits(huge), "-" + _digits(huge)]


def _digits(n: int) -> str:
    parts = []
    while n:
        n, low = divmod(n, 10**1000)
        parts.append(str(low).zfill(1000))
    return "".join(reversed(parts)).lstrip("0")


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_outputs_is_one_array(impl: ModuleType) -> None:
    values = [{"a": 1}, None, "x", [1.5]]
    assert impl.encode_outputs(values) == python_json(values)
    assert impl.encode_outputs([]) == "[]"
    assert impl.encode_outputs(iter([1, 2])) == "[1,2]"
    for single in ("ab", b"ab", {"a": 1}):
        with pytest.raises(TypeError, match="wrap it in a list"):
            impl.encode_outputs(single)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("value", "path", "type_name", "fragment"),
    [
        ({1, 2}, "$", "set", "only None, bool"),
        ({"items": [0, 1, 2, {"when": object()}]}, "$.items[3].when", "object", "only None"),
        ({"a": {1: "x"}}, "$.a", "int", "dict keys must be str"),
        ({"a": {None: "x"}}, "$.a", "NoneType", "dict keys must be str"),
        ([1.0, math.nan], "$[1]", "float", "nan is not valid JSON"),
        ({"x": math.inf}, "$.x", "float", "inf is not valid JSON"),
        ({"x": -math.inf}, "$.x", "float", "-inf is not valid JSON"),
        ({"s": "a\x00b"}, "$.s", "str", "U+0000"),
        ({"s": "a\ud800b"}, "$.s", "str", "lone surrogate"),
        ({"a\x00": 1}, "$", "str", "U+0000"),
        ({"k\udc00": 1}, "$", "str", "lone surrogate"),
        ({"odd key": {"é": [b"bytes"]}}, '$["odd key"]["\\u00e9"][0]', "bytes", "only None"),
        ({"1x": [1, 2, {"ok": 1j}]}, '$["1x"][2].ok', "complex", "only None"),
    ],
)
def test_rejects_what_jsonb_cannot_store(
    impl: ModuleType, value: Any, path: str, type_name: str, fragment: str
) -> None:
    with pytest.raises(UnencodableValue) as info:
        impl.encode_value(value)
    error = info.value
    assert error.path == path
    assert error.type_name == type_name
    assert fragment in str(error)
    assert f"'{type_name}' at {path}:" in str(error)
    assert error.position is None
    assert isinstance(error, CoreError)


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_errors_name_the_output(impl: ModuleType) -> None:
    with pytest.raises(UnencodableValue) as info:
        impl.encode_outputs([{"ok": 1}, {"ok": 2}, {"bad": {3}}])
    assert info.value.position == 2
    assert info.value.path == "$.bad"
    assert str(info.value).startswith("output 2: cannot encode a value of type 'set' at $.bad")


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_limit_and_cycles(impl: ModuleType) -> None:
    nested: Any = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert impl.encode_value(nested) == "[" * MAX_DEPTH + "]" * MAX_DEPTH
    with pytest.raises(UnencodableValue, match="deeper than 512") as info:
        impl.encode_value([nested])
    assert info.value.path == "$" + "[0]" * MAX_DEPTH
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(UnencodableValue, match="reference cycle"):
        impl.encode_value(cycle)
    # The limit counts from each output, not from the batch array around them.
    assert impl.encode_outputs([nested, nested]).startswith("[[[")


@pytest.mark.parametrize("impl", IMPLS)
def test_output_decodes_back(impl: ModuleType) -> None:
    value = {"n": [1, 2.5, -(10**40)], "s": "é\n", "t": (True, None)}
    text = impl.encode_value(value)
    assert impl.decode_many([text]) == [{"n": [1, 2.5, -(10**40)], "s": "é\n", "t": [True, None]}]
