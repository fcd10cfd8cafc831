"""Property tests: the Rust core and its Python twin agree on generated inputs.

For every input both give equal values (compared with types: 1, 1.0 and True differ) or both
raise the same exception class, for the same position.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgflow.codec import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP
from pgflow.codec import twin as codec

_core = pytest.importorskip("pgflow._core")

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def typed(value: object) -> object:
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def outcome(call: Callable[[], Any]) -> tuple[str, object]:
    """What a call produced: its typed value, or its exception class and position."""
    try:
        return ("ok", typed(call()))
    except Exception as exc:
        return (type(exc).__name__, getattr(exc, "position", None))


# --- JSON values and texts ---------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
keys = st.one_of(st.sampled_from(["a", "b", "id", "é", "", "a b", '"']), any_text)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)


@st.composite
def styled_json(draw: st.DrawFn) -> str:
    """A valid JSON text in one of several styles (spacing, escaping)."""
    value = draw(json_values)
    ensure_ascii = draw(st.booleans())
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators)
    pad = draw(st.sampled_from(["", " ", "\n", "\t\r\n "]))
    return pad + text + draw(st.sampled_from(["", " ", "\n"]))


escape_pieces = st.one_of(
    st.sampled_from(["\\n", '\\"', "\\\\", "\\/", "\\b", "\\f", "\\r", "\\t", "[", "]", "{"]),
    st.from_regex(r"\\u[0-9a-fA-F]{4}", fullmatch=True),
    st.from_regex(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}", fullmatch=True),
    st.sampled_from(["\\ud800", "\\udfff", "\\uD83D\\uDE00", "\\ud83d\\u0041"]),
    st.text(
        st.characters(exclude_characters='"\\', min_codepoint=0x20, exclude_categories=["Cs"]),
        max_size=5,
    ),
)
escaped_strings = st.lists(escape_pieces, max_size=8).map(lambda parts: '"' + "".join(parts) + '"')

number_texts = st.from_regex(
    r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True
)

json_alphabet = st.sampled_from([*'[]{}",:0123456789.-+eEtrufalsn \t\n\\NaIiy', "\x00", "é"])
junk_texts = st.text(json_alphabet, max_size=30)


@st.composite
def mutated_json(draw: st.DrawFn) -> str:
    """A valid text with one random edit: mostly invalid, sometimes still valid."""
    text = draw(styled_json())
    if not text:
        return text
    at = draw(st.integers(0, len(text)))
    edit = draw(st.sampled_from(["insert", "delete", "replace"]))
    piece: str = draw(json_alphabet)
    if edit == "insert":
        return text[:at] + piece + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at] + piece + text[at + 1 :]


@st.composite
def deep_texts(draw: st.DrawFn) -> str:
    depth = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))
    opens = draw(st.lists(st.sampled_from(["[", '{"k":']), min_size=depth, max_size=depth))
    closes = ["]" if o == "[" else "}" for o in reversed(opens)]
    inner = draw(st.sampled_from(["1", "[]", "{}", '"[[[["', '"\\"]]"']))
    return "".join(opens) + inner + "".join(closes)


json_texts = st.one_of(
    styled_json(),
    escaped_strings,
    number_texts,
    junk_texts,
    mutated_json(),
    deep_texts(),
    st.sampled_from(["NaN", "-Infinity", "[1e400]", "1" + "0" * 5000, '"\\ud800"']),
)


@SETTINGS
@given(st.lists(st.tuples(json_texts, st.booleans()), max_size=4))
def test_decode_many_agrees(items: list[tuple[str, bool]]) -> None:
    raws: list[bytes | str] = [t.encode("utf-8") if as_bytes else t for t, as_bytes in items]
    rust = outcome(lambda: _core.decode_many(raws))
    twin = outcome(lambda: codec.decode_many(raws))
    assert rust == twin


@SETTINGS
@given(styled_json())
def test_valid_texts_decode_like_json_loads(text: str) -> None:
    [value] = _core.decode_many([text])
    assert typed(value) == typed(json.loads(text))


@SETTINGS
@given(st.binary(max_size=12))
def test_arbitrary_bytes_agree(data: bytes) -> None:
    assert outcome(lambda: _core.decode_many([data])) == outcome(lambda: codec.decode_many([data]))


# --- Task batches ------------------------------------------------------------------------------

RUNS = ["r0", "r1"]
SLUGS = ["a", "b", "c"]

blob_texts = st.one_of(
    st.lists(json_values, max_size=6).map(json.dumps),
    styled_json(),
    mutated_json(),
    st.sampled_from(["[]", "{}", "1", '"s"', "[1, 2, 3]", "[", "[1e400, 2]", "null"]),
    deep_texts(),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Any], dict[str, str]]:
    blobs: dict[str, str] = {}
    for run in RUNS:
        for slug in ["", *SLUGS]:
            if draw(st.integers(0, 4)) > 0:  # absent one time in five
                blobs[f"{run}:{slug}"] = draw(blob_texts)
    tasks = draw(
        st.lists(
            st.tuples(
                st.sampled_from([MODE_FLOW_INPUT, MODE_DEPS, MODE_MAP, MODE_MAP, 3, -1]),
                st.sampled_from(RUNS),
                st.lists(st.sampled_from(SLUGS), max_size=3),
                st.integers(-2, 7),
            ),
            max_size=8,
        )
    )
    return tasks, blobs


@SETTINGS
@given(batches())
def test_assembly_agrees(batch: tuple[list[Any], dict[str, str]]) -> None:
    tasks, blobs = batch
    rust_fused = outcome(lambda: _core.assemble_and_decode(tasks, blobs))
    twin_fused = outcome(lambda: codec.assemble_and_decode(tasks, blobs))
    rust_split = outcome(lambda: _core.decode_many(_core.assemble_inputs(tasks, blobs)))
    twin_split = outcome(lambda: codec.decode_many(codec.assemble_inputs(tasks, blobs)))
    assert rust_fused == twin_fused
    assert rust_split == rust_fused
    assert twin_split == twin_fused


@SETTINGS
@given(st.lists(json_values, min_size=1, max_size=40), st.data())
def test_map_tasks_select_elements(parent: list[Any], data: st.DataObject) -> None:
    text = json.dumps(parent, separators=data.draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    indexes = data.draw(st.lists(st.integers(0, len(parent) - 1), max_size=10))
    tasks = [(MODE_MAP, "r", ["p"], i) for i in indexes]
    got = _core.assemble_and_decode(tasks, {"r:p": text})
    assert typed(got) == typed([json.loads(json.dumps(parent[i])) for i in indexes])


# --- Encoding ----------------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
risky_text = st.one_of(
    any_text,
    st.lists(st.one_of(any_text, surrogates, st.just("\x00")), max_size=4).map("".join),
)


class Odd:
    pass


risky_scalars = st.one_of(
    scalars,
    risky_text,
    st.floats(),
    st.integers(min_value=-(10**6000), max_value=10**6000),
    st.sampled_from([b"bytes", Odd(), {1, 2}, 1j]),
)

risky_keys = st.one_of(keys, risky_text, st.integers(), st.none(), st.booleans())

risky_values = st.recursive(
    risky_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(risky_keys, children, max_size=4),
    ),
    max_leaves=20,
)


def encode_outcome(call: Callable[[], str]) -> tuple[str, object]:
    try:
        return ("ok", call())
    except Exception as exc:
        detail = (
            getattr(exc, "path", None),
            getattr(exc, "type_name", None),
            getattr(exc, "position", None),
            str(exc),
        )
        return (type(exc).__name__, detail)


@SETTINGS
@given(risky_values)
def test_encode_value_agrees(value: Any) -> None:
    rust = encode_outcome(lambda: _core.encode_value(value))
    twin = encode_outcome(lambda: codec.encode_value(value))
    assert rust == twin


@SETTINGS
@given(st.lists(risky_values, max_size=5))
def test_encode_outputs_agrees(values: list[Any]) -> None:
    rust = encode_outcome(lambda: _core.encode_outputs(values))
    twin = encode_outcome(lambda: codec.encode_outputs(values))
    assert rust == twin


@SETTINGS
@given(json_values)
def test_encoded_values_decode_back(value: Any) -> None:
    # U+0000 is refused on purpose (jsonb cannot store it); everything else must go through.
    assume("\\u0000" not in json.dumps(value))
    text = _core.encode_value(value)
    assert text == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    [back] = _core.decode_many([text])
    assert typed(back) == typed(value)


@SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_print_like_repr(value: float) -> None:
    assert _core.encode_value(value) == repr(value)
