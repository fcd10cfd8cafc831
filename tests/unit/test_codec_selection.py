"""Selection between the Rust core and its Python fallback, and the stub of the built module."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgflow
from pgflow import codec, errors, plugins
from pgflow.codec import fallback

_core = pytest.importorskip("pgflow._core")

FUNCTIONS = ["assemble_inputs"]
CONSTANTS = ["MAX_DEPTH", "MODE_DEPS", "MODE_FLOW_INPUT", "MODE_MAP"]


@pytest.fixture
def reload_codec(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch
    monkeypatch.undo()
    importlib.reload(codec)
    # a reload forgets what the plugins layer installed when pgflow was imported
    codec.use_unknown_encoder(plugins.manager.encode_unknown)


def test_rust_is_used_when_built(reload_codec: pytest.MonkeyPatch) -> None:
    reload_codec.delenv("PGFLOW_NO_RUST", raising=False)
    module = importlib.reload(codec)
    assert module.RUST_AVAILABLE
    assert module.use_rust()
    assert module.IMPLEMENTATION == "rust"
    for name in FUNCTIONS:
        assert getattr(module, name) is getattr(_core, name)


def test_env_forces_the_fallback(reload_codec: pytest.MonkeyPatch) -> None:
    reload_codec.setenv("PGFLOW_NO_RUST", "1")
    module = importlib.reload(codec)
    assert module.RUST_AVAILABLE
    assert not module.use_rust()
    assert module.IMPLEMENTATION == "python"
    for name in FUNCTIONS:
        assert getattr(module, name) is getattr(fallback, name)


def test_constants_agree() -> None:
    for name in CONSTANTS:
        assert getattr(_core, name) == getattr(fallback, name) == getattr(codec, name)
    assert (_core.MODE_FLOW_INPUT, _core.MODE_DEPS, _core.MODE_MAP) == (0, 1, 2)


def stub_names() -> set[str]:
    stub = Path(pgflow.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_stub_matches_the_built_module() -> None:
    public = {name for name in dir(_core) if not name.startswith("_")} | {"__version__"}
    assert stub_names() == public
    assert set(FUNCTIONS) | set(CONSTANTS) | {"__version__"} == public


def test_fallback_has_the_same_signatures() -> None:
    for name in FUNCTIONS:
        rust_params = list(inspect.signature(getattr(_core, name)).parameters)
        fallback_params = list(inspect.signature(getattr(fallback, name)).parameters)
        assert rust_params == fallback_params, name


def test_rust_raises_the_shared_classes() -> None:
    with pytest.raises(errors.InvalidJson) as info:
        _core.assemble_inputs([(2, "r", [], 0)], {"r:": "[1,"})
    assert type(info.value) is errors.InvalidJson
    assert isinstance(info.value, errors.PgflowError) and isinstance(info.value, ValueError)
    assert info.value.position == 0


def test_errors_survive_pickling() -> None:
    error = errors.UnencodableValue("boom", path="$.a", type_name="set", position=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.type_name, copy.position) == ("boom", "$.a", "set", 3)
