"""Input assembly rules of the hot-path core, on the Rust core and its Python twin alike."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import pytest

from pgflow.codec import MAX_DEPTH, MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP
from pgflow.codec import twin as codec
from pgflow.errors import (
    CoreError,
    ElementOutOfRange,
    InvalidJson,
    MissingBlob,
    NotAnArray,
)

try:
    from pgflow import _core
except ImportError:  # pragma: no cover - the extension is built in every supported setup
    _core = None  # type: ignore[assignment]

IMPLS = [pytest.param(codec, id="python")]
if _core is not None:
    IMPLS.append(pytest.param(_core, id="rust"))

BLOBS = {
    "r1:": '{"order": 7, "items": ["a", "b"]}',
    "r1:fetch": '{"rows": [1, 2, 3]}',
    "r1:list": '[10, {"k": "v"}, "three", [4]]',
    "r1:flag": "true",
    "r2:": '[{"n": 1}, {"n": 2}]',
    "r2:obj": '{"not": "an array"}',
    "r3:bad": '{"a": [1, 2}',
}


def both_ways(impl: ModuleType, tasks: list[Any], blobs: Mapping[str, str]) -> list[Any]:
    """The fused call, checked against assemble + decode."""
    fused: list[Any] = impl.assemble_and_decode(tasks, blobs)
    raws = impl.assemble_inputs(tasks, blobs)
    assert all(isinstance(raw, bytes) for raw in raws)
    assert impl.decode_many(raws) == fused
    return fused


@pytest.mark.parametrize("impl", IMPLS)
def test_flow_input_mode(impl: ModuleType) -> None:
    got = both_ways(impl, [(MODE_FLOW_INPUT, "r1", [], 0)], BLOBS)
    assert got == [{"order": 7, "items": ["a", "b"]}]


@pytest.mark.parametrize("impl", IMPLS)
def test_deps_mode_keeps_order_and_skips_absent(impl: ModuleType) -> None:
    tasks = [
        (MODE_DEPS, "r1", ["flag", "skipped", "fetch"], 0),
        (MODE_DEPS, "r1", [], 0),
        (MODE_DEPS, "r9", ("gone",), 0),
    ]
    got = both_ways(impl, tasks, BLOBS)
    assert got == [{"flag": True, "fetch": {"rows": [1, 2, 3]}}, {}, {}]
    assert list(got[0]) == ["flag", "fetch"]


@pytest.mark.parametrize("impl", IMPLS)
def test_map_mode_over_step_output_and_root_input(impl: ModuleType) -> None:
    tasks = [(MODE_MAP, "r1", ["list"], i) for i in range(4)] + [
        (MODE_MAP, "r2", [], 1),
        (MODE_MAP, "r2", [], 0),
    ]
    got = both_ways(impl, tasks, BLOBS)
    assert got == [10, {"k": "v"}, "three", [4], {"n": 2}, {"n": 1}]


@pytest.mark.parametrize("impl", IMPLS)
def test_map_errors(impl: ModuleType) -> None:
    for call in (impl.assemble_inputs, impl.assemble_and_decode):
        with pytest.raises(NotAnArray, match="r2:obj") as not_array:
            call([(MODE_MAP, "r2", ["obj"], 0)], BLOBS)
        assert not_array.value.position == 0
        for index in (-1, 4, 2**70):
            with pytest.raises(ElementOutOfRange, match="r1:list"):
                call([(MODE_MAP, "r1", ["list"], index)], BLOBS)
        with pytest.raises(MissingBlob, match="r1:nothing"):
            call([(MODE_MAP, "r1", ["nothing"], 0)], BLOBS)
        with pytest.raises(InvalidJson, match="r3:bad"):
            call([(MODE_MAP, "r3", ["bad"], 0)], BLOBS)


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_and_invalid_blobs(impl: ModuleType) -> None:
    for call in (impl.assemble_inputs, impl.assemble_and_decode):
        with pytest.raises(MissingBlob, match="run input") as missing:
            call([(MODE_FLOW_INPUT, "r1", [], 0), (MODE_FLOW_INPUT, "r404", [], 0)], BLOBS)
        assert missing.value.position == 1
        with pytest.raises(InvalidJson, match="task 0: blob 'r3:bad'"):
            call([(MODE_DEPS, "r3", ["bad"], 0)], BLOBS)


@pytest.mark.parametrize("impl", IMPLS)
def test_first_failing_task_wins(impl: ModuleType) -> None:
    tasks = [
        (MODE_DEPS, "r1", ["fetch"], 0),
        (MODE_DEPS, "r3", ["bad"], 0),
        (MODE_FLOW_INPUT, "r404", [], 0),
        (9, "r1", [], 0),
    ]
    for call in (impl.assemble_inputs, impl.assemble_and_decode):
        with pytest.raises(InvalidJson) as info:
            call(tasks, BLOBS)
        assert info.value.position == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_mode_is_a_value_error(impl: ModuleType) -> None:
    for mode in (3, -1, 2**80):
        with pytest.raises(CoreError, match="unknown mode") as info:
            impl.assemble_and_decode([(mode, "r1", [], 0)], BLOBS)
        assert type(info.value) is CoreError
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("task", "message"),
    [
        ([0, "r1", [], 0], "tuple"),
        ((0, "r1", []), "tuple"),
        (("0", "r1", [], 0), "mode must be an int"),
        ((0, b"r1", [], 0), "run_id must be str"),
        ((1, "r1", "fetch", 0), "dep_slugs must be a list or tuple"),
        ((1, "r1", ["fetch", 3], 0), r"dep_slugs\[1\] must be str"),
        ((2, "r1", ["list"], 1.0), "task_index must be an int"),
    ],
)
def test_malformed_specs_are_type_errors(impl: ModuleType, task: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        impl.assemble_and_decode([(0, "r1", [], 0), task], BLOBS)


@pytest.mark.parametrize("impl", IMPLS)
def test_blob_values_must_be_text(impl: ModuleType) -> None:
    with pytest.raises(TypeError, match="r1:"):
        impl.assemble_inputs([(MODE_FLOW_INPUT, "r1", [], 0)], {"r1:": b"{}"})
    # None counts as absent, like a skipped dependency.
    assert impl.assemble_and_decode([(MODE_DEPS, "r1", ["a"], 0)], {"r1:a": None}) == [{}]


@pytest.mark.parametrize("impl", IMPLS)
def test_lone_surrogates_in_ids_and_blobs(impl: ModuleType) -> None:
    with pytest.raises(CoreError, match="run_id"):
        impl.assemble_inputs([(MODE_FLOW_INPUT, "r\ud800", [], 0)], {})
    with pytest.raises(InvalidJson, match="surrogate"):
        impl.assemble_inputs([(MODE_FLOW_INPUT, "r", [], 0)], {"r:": '"\ud800"'})


class LazyBlobs(Mapping[str, str]):
    """A non-dict mapping: the core must go through its `.get`."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.asked.append(key)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.parametrize("impl", IMPLS)
def test_any_mapping_works_and_each_key_is_fetched_once(impl: ModuleType) -> None:
    blobs = LazyBlobs(BLOBS)
    tasks = [(MODE_MAP, "r1", ["list"], i) for i in range(3)] + [(MODE_DEPS, "r1", ["x"], 0)]
    assert impl.assemble_and_decode(tasks, blobs) == [10, {"k": "v"}, "three", {}]
    assert sorted(blobs.asked) == ["r1:list", "r1:x"]


@pytest.mark.parametrize("impl", IMPLS)
def test_each_task_gets_its_own_objects(impl: ModuleType) -> None:
    tasks = [
        (MODE_FLOW_INPUT, "r1", [], 0),
        (MODE_FLOW_INPUT, "r1", [], 0),
        (MODE_DEPS, "r1", ["fetch"], 0),
        (MODE_DEPS, "r1", ["fetch"], 0),
        (MODE_MAP, "r1", ["list"], 1),
        (MODE_MAP, "r1", ["list"], 1),
        (MODE_DEPS, "r1", ["list"], 0),
    ]
    got = impl.assemble_and_decode(tasks, BLOBS)
    got[0]["items"].append("mutated")
    got[2]["fetch"]["rows"].clear()
    got[4]["k"] = "mutated"
    assert got[1] == {"order": 7, "items": ["a", "b"]}
    assert got[3] == {"fetch": {"rows": [1, 2, 3]}}
    assert got[5] == {"k": "v"}
    assert got[6] == {"list": [10, {"k": "v"}, "three", [4]]}


@pytest.mark.parametrize("impl", IMPLS)
def test_deps_wrapper_counts_toward_depth(impl: ModuleType) -> None:
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    blobs = {"r:": deep, "r:s": deep, "r:t": "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)}
    assert impl.assemble_and_decode([(MODE_FLOW_INPUT, "r", [], 0)], blobs)
    assert impl.assemble_and_decode([(MODE_DEPS, "r", ["t"], 0)], blobs)
    for call in (impl.assemble_inputs, impl.assemble_and_decode):
        with pytest.raises(InvalidJson, match="512"):
            call([(MODE_DEPS, "r", ["s"], 0)], blobs)


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_map_parent_is_validated(impl: ModuleType) -> None:
    blobs = {"r:": "[1, 2, oops]"}
    with pytest.raises(InvalidJson):
        impl.assemble_inputs([(MODE_MAP, "r", [], 0)], blobs)


@pytest.mark.parametrize("impl", IMPLS)
def test_map_elements_that_json_cannot_reprint(impl: ModuleType) -> None:
    huge = "9" * 5000
    blobs = {"r:": f'[1e400, {huge}, "\\ud800", {{"a": 1, "a": 2}}]'}
    tasks: list[Any] = [(MODE_MAP, "r", [], i) for i in range(4)]
    got = both_ways(impl, tasks, blobs)
    assert got[0] == float("inf")
    assert got[1] == int("9" * 4000) * 10**1000 + int("9" * 1000)
    assert got[2] == "\ud800"
    assert got[3] == {"a": 2}


@pytest.mark.parametrize("impl", IMPLS)
def test_large_batch(impl: ModuleType) -> None:
    # Large enough for the Rust core to release the GIL while scanning.
    parent = [{"i": i, "s": "x" * 20} for i in range(10_000)]
    blobs = {"r:": json.dumps(parent)}
    tasks: list[Any] = [(MODE_MAP, "r", [], i) for i in range(0, 10_000, 7)]
    assert both_ways(impl, tasks, blobs) == parent[::7]


@pytest.mark.parametrize("impl", IMPLS)
def test_slugs_needing_escapes(impl: ModuleType) -> None:
    blobs = {'r:a"b\\c\x00é': "1"}
    got = both_ways(impl, [(MODE_DEPS, "r", ['a"b\\c\x00é'], 0)], blobs)
    assert got == [{'a"b\\c\x00é': 1}]
