"""Property tests: with the Rust core or its Python fallback assembling the inputs, the codec
gives the same values and raises the same exception classes (messages may differ) for any batch,
including NaN, NUL characters, huge numbers, deep nesting and broken JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgflow import codec
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


def decoded(module: Any, specs: Any, blobs: Any) -> list[Any]:
    return codec.decode_many(module.assemble_inputs(specs, blobs))


def assert_agree(specs: Any, blobs: Any) -> None:
    rust = outcome(lambda: decoded(_core, specs, blobs))
    msgspec_ = outcome(lambda: decoded(fallback, specs, blobs))
    assert rust[0] == msgspec_[0], (rust, msgspec_)
    if rust[0] == "error":
        assert rust[1] is msgspec_[1]
    else:
        assert same(rust[1], msgspec_[1]), (rust[1], msgspec_[1])


def as_inputs(items: list[str]) -> tuple[list[Any], dict[str, str]]:
    """Each text as a run input, and all of them again as one map parent's elements."""
    specs: list[Any] = [(MODE_FLOW_INPUT, f"r{i}", [], 0) for i in range(len(items))]
    blobs = {f"r{i}:": text for i, text in enumerate(items)}
    blobs["m:"] = "[" + ", ".join(items) + "]"
    specs += [(MODE_MAP, "m", [], i) for i in range(len(items))]
    return specs, blobs


@SETTINGS
@given(st.lists(values, max_size=6), st.booleans())
def test_decoding_values_agrees(items: list[Any], pretty: bool) -> None:
    assert_agree(*as_inputs([dumps(v, pretty) for v in items]))
    expected = outcome(lambda: [json.loads(dumps(v, pretty)) for v in items])
    got = outcome(lambda: decoded(_core, *as_inputs([dumps(v, pretty) for v in items])))
    assert got[0] == expected[0] == "ok"
    assert same(got[1][: len(items)], expected[1])


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
    specs, blobs = as_inputs(items)
    assert_agree(specs[: len(items)], blobs)  # run inputs alone
    assert_agree(specs[len(items) :], blobs)  # elements of one map parent


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
    assert_agree(specs, blobs)
    rust = outcome(lambda: _core.assemble_inputs(specs, blobs))
    python = outcome(lambda: fallback.assemble_inputs(specs, blobs))
    assert rust[0] == python[0], (rust, python)
    if rust[0] == "error":
        assert rust[1] is python[1]
    else:
        # the same JSON, not necessarily the same bytes (the Rust core slices, the fallback
        # writes); each input decodes alike, or fails alike
        for r, p in zip(rust[1], python[1], strict=True):
            a, b = (
                outcome(lambda r=r: codec.decode_json(r)),
                outcome(lambda p=p: codec.decode_json(p)),
            )
            assert a[0] == b[0]
            if a[0] == "ok":
                assert same(a[1], b[1])
