"""Decoding rules of the hot-path core, checked on the Rust core and its Python twin alike."""

from __future__ import annotations

import json
import math
from types import ModuleType

import pytest

from pgflow.codec import twin as codec
from pgflow.errors import CoreError, InvalidJson

try:
    from pgflow import _core
except ImportError:  # pragma: no cover - the extension is built in every supported setup
    _core = None  # type: ignore[assignment]

IMPLS = [pytest.param(codec, id="python")]
if _core is not None:
    IMPLS.append(pytest.param(_core, id="rust"))


def typed(value: object) -> object:
    """A structure that compares equal only when types match too (1, 1.0 and True differ)."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def decode_one(impl: ModuleType, raw: bytes | str) -> object:
    [value] = impl.decode_many([raw])
    return value


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-0", 0),
        ("-0.0", -0.0),
        ("1.5", 1.5),
        ("1E2", 100.0),
        ("1e400", math.inf),
        ("-1e400", -math.inf),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        ("-9223372036854775809", -9223372036854775809),
        (' \t\r\n{"a": [1, 2]} \n', {"a": [1, 2]}),
        ('{"a": 1, "b": 2, "a": 3}', {"a": 3, "b": 2}),
        ('"caf\\u00e9 \\ud83d\\ude00"', "café \U0001f600"),
        ('"\\ud800"', "\ud800"),
        ('"\\ud83d\\u0041"', "\ud83dA"),
        ('"\\ud800\\ud800\\udc00"', "\ud800\U00010000"),
        ('"\\/\\b\\f\\n\\r\\t\\"\\\\"', '/\b\f\n\r\t"\\'),
        ("[]", []),
        ("{}", {}),
        ('"é😀"', "é😀"),
        ("[true, false, null]", [True, False, None]),
    ],
)
def test_decodes_like_python_json(impl: ModuleType, text: str, expected: object) -> None:
    assert typed(decode_one(impl, text)) == typed(expected)
    assert typed(decode_one(impl, text.encode("utf-8"))) == typed(expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_integers_of_any_size(impl: ModuleType) -> None:
    huge = 7 * 10**9000 + 3
    assert decode_one(impl, "-" + _digits(huge)) == -huge
    assert decode_one(impl, "[" + _digits(huge) + "]") == [huge]


def _digits(n: int) -> str:
    # str(n) is refused past 4300 digits; build the text piecewise.
    parts = []
    while n:
        n, low = divmod(n, 10**1000)
        parts.append(str(low).zfill(1000))
    return "".join(reversed(parts)).lstrip("0") or "0"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "NaN",
        "Infinity",
        "-Infinity",
        "[NaN]",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "[1,]",
        '{"a":1,}',
        "{a:1}",
        "'x'",
        '"\t"',
        '"\\x"',
        '"\\u12G4"',
        "[1 2]",
        "tru",
        '{"a" 1}',
        "1 2",
        "\ufeff1",
        '"abc',
        "[",
    ],
)
def test_rejects_invalid_json(impl: ModuleType, text: str) -> None:
    with pytest.raises(InvalidJson) as info:
        impl.decode_many(["1", text])
    assert info.value.position == 1
    assert "item 1" in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_bad_unicode(impl: ModuleType) -> None:
    with pytest.raises(InvalidJson):
        impl.decode_many([b'"\xff"'])
    with pytest.raises(InvalidJson):
        impl.decode_many([b'"\xed\xa0\x80"'])  # an encoded surrogate is not UTF-8
    with pytest.raises(InvalidJson):
        impl.decode_many(['"\ud800"'])  # a str holding a raw lone surrogate


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_limit(impl: ModuleType) -> None:
    limit = codec.MAX_DEPTH
    assert decode_one(impl, "[" * limit + "]" * limit) is not None
    nested_objects = '{"a":' * limit + "1" + "}" * limit
    assert isinstance(decode_one(impl, nested_objects), dict)
    with pytest.raises(InvalidJson, match="deeper"):
        impl.decode_many(["[" * (limit + 1) + "]" * (limit + 1)])
    with pytest.raises(InvalidJson):
        impl.decode_many(['{"a":' * (limit + 1) + "1" + "}" * (limit + 1)])
    with pytest.raises(InvalidJson):
        impl.decode_many(["[" * 100_000 + "]" * 100_000])
    # Brackets inside strings do not count.
    assert decode_one(impl, json.dumps(["[" * 1000, "{" * 1000])) == ["[" * 1000, "{" * 1000]
    assert decode_one(impl, json.dumps(['\\"[' * 600])) == ['\\"[' * 600]


@pytest.mark.parametrize("impl", IMPLS)
def test_errors_are_value_errors_and_types_are_checked(impl: ModuleType) -> None:
    assert issubclass(InvalidJson, CoreError)
    assert issubclass(CoreError, ValueError)
    with pytest.raises(TypeError, match="item 1"):
        impl.decode_many(["1", 2])
    assert impl.decode_many([]) == []
    assert impl.decode_many(iter(["1", b"2"])) == [1, 2]
    for single in ("[1]", b"[1]"):
        with pytest.raises(TypeError, match="wrap it in a list"):
            impl.decode_many(single)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_batches_decode_correctly(impl: ModuleType) -> None:
    # Big enough for the Rust core to release the GIL while scanning.
    doc = [{"id": i, "name": f"n{i}", "tags": ["x", "é"], "v": i / 7} for i in range(5000)]
    text = json.dumps(doc)
    assert len(text) > 256 * 1024
    assert impl.decode_many([text, text.encode()]) == [doc, doc]


@pytest.mark.parametrize("impl", IMPLS)
def test_decoded_values_are_independent(impl: ModuleType) -> None:
    first, second = impl.decode_many(['{"a": []}', '{"a": []}'])
    first["a"].append(1)
    assert second == {"a": []}


@pytest.mark.parametrize("impl", IMPLS)
def test_garbage_collection_state_is_left_as_found(impl: ModuleType) -> None:
    import gc

    was_enabled = gc.isenabled()
    try:
        gc.enable()
        impl.decode_many(['{"a": [1, 2]}'])
        impl.assemble_and_decode([(0, "r", [], 0)], {"r:": "[[]]"})
        with pytest.raises(InvalidJson):
            impl.decode_many(["[1", "2"])
        assert gc.isenabled()
        gc.disable()
        impl.decode_many(['{"a": [1, 2]}'])
        impl.assemble_and_decode([(0, "r", [], 0)], {"r:": "[[]]"})
        assert not gc.isenabled()
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
