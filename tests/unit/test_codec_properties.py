"""Property tests: the Rust core and its msgspec fallback give the same values and raise the
same exception classes (messages may differ) for any batch, including NaN, NUL characters,
huge numbers, deep nesting and broken JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgflow.codec import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP, fallback

_core = pytest.importorskip("pgflow._core")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values as PostgreSQL's jsonb::text prints them: any text (NUL characters included, as
# escapes), integers of any size, finite floats
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)


def dumps(value: Any, pretty: bool) -> str:
    # jsonb prints ", " and ": "; hand-written JSON may be compact
    return json.dumps(value, separators=(", ", ": ") if pretty else (",", ":"), ensure_ascii=pretty)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:
        return "error", type(exc)


def same(a: Any, b: Any) -> bool:
    """Equal values, NaN-free floats compared exactly (-0.0 and 0.0 apart)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or (a != a and b != b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def assert_agree(function: str, *args: Any) -> None:
    rust = outcome(lambda: getattr(_core, function)(*args))
    msgspec_ = outcome(lambda: getattr(fallback, function)(*args))
    assert rust[0] == msgspec_[0], (rust, msgspec_)
    if rust[0] == "error":
        assert rust[1] is msgspec_[1]
    else:
        assert same(rust[1], msgspec_[1]), (rust[1], msgspec_[1])


@SETTINGS
@given(st.lists(values, max_size=6), st.booleans())
def test_decoding_values_agrees(items: list[Any], pretty: bool) -> None:
    assert_agree("decode_many", [dumps(v, pretty) for v in items])
    assert_agree("decode_many", [dumps(v, pretty).encode() for v in items])


# texts that are mostly JSON and sometimes broken, or nested around the limit
broken = st.one_of(
    values.map(lambda v: dumps(v, True)),
    values.map(lambda v: dumps(v, False)[:-1]),
    values.map(lambda v: dumps(v, False) + ","),
    st.sampled_from(["NaN", "-Infinity", '"\\ud800"', '"\\u0000"', "[1,]", "{'a': 1}", " ", "01"]),
    st.integers(min_value=MAX_DEPTH - 2, max_value=MAX_DEPTH + 3).map(lambda d: "[" * d + "]" * d),
    st.integers(min_value=MAX_DEPTH - 2, max_value=MAX_DEPTH + 3).map(
        lambda d: '{"a":' * d + "1" + "}" * d
    ),
)


@SETTINGS
@given(st.lists(broken, max_size=4))
def test_broken_and_deep_texts_agree(items: list[str]) -> None:
    assert_agree("decode_many", items)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[tuple[int, str, list[str], int]], dict[str, str]]:
    """Blobs of a few runs and steps, and task specs that use (or miss) them."""
    runs = ["r1", "r2"]
    steps = ["a", "b", "c"]
    blobs: dict[str, str] = {}
    for run in runs:
        for step in ["", *steps]:
            if draw(st.booleans()):
                if draw(st.booleans()):
                    array = draw(st.lists(values, max_size=6))
                    blobs[f"{run}:{step}"] = dumps(array, draw(st.booleans()))
                else:
                    blobs[f"{run}:{step}"] = draw(broken)
    specs = draw(
        st.lists(
            st.tuples(
                st.sampled_from([MODE_FLOW_INPUT, MODE_DEPS, MODE_MAP, MODE_MAP, 9]),
                st.sampled_from(runs),
                st.lists(st.sampled_from(steps), max_size=3, unique=True),
                st.integers(min_value=-1, max_value=6),
            ),
            max_size=8,
        )
    )
    return specs, blobs


@SETTINGS
@given(batches())
def test_assembling_batches_agrees(batch: tuple[list[Any], dict[str, str]]) -> None:
    specs, blobs = batch
    assert_agree("assemble_and_decode", specs, blobs)
    rust = outcome(lambda: _core.assemble_inputs(specs, blobs))
    msgspec_ = outcome(lambda: fallback.assemble_inputs(specs, blobs))
    assert rust[0] == msgspec_[0], (rust, msgspec_)
    if rust[0] == "error":
        assert rust[1] is msgspec_[1]
    else:
        # the same JSON, not necessarily the same bytes (the Rust core slices, msgspec writes)
        decoded = [outcome(lambda r=r: fallback.decode_many([r])[0]) for r in rust[1]]
        expected = [outcome(lambda r=r: fallback.decode_many([r])[0]) for r in msgspec_[1]]
        assert [d[0] for d in decoded] == [e[0] for e in expected]
        for d, e in zip(decoded, expected, strict=True):
            if d[0] == "ok":
                assert same(d[1], e[1])
