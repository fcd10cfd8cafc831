"""docs/plugins.md documents every hook with its exact signature, and nothing else as a hook;
every hook has a test of its own (its name appears in a test file other than this one)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgflow.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"

# a hook's section: its heading, then the first python block (its signature)
SECTION = re.compile(r"^### `(pgflow_\w+)\(([^`]*)\)`\n(.*?)```python\n(.*?)```", re.M | re.S)


def hook_specs() -> dict[str, Callable[..., Any]]:
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if callable(value) and getattr(value, "pgflow_spec", None) is not None
    }


def documented() -> dict[str, tuple[str, str]]:
    """hook name -> (the heading's argument list, the signature block)."""
    found: dict[str, tuple[str, str]] = {}
    for match in SECTION.finditer(PAGE.read_text()):
        name, heading_args, _, block = match.groups()
        assert name not in found, f"docs/plugins.md has two sections for {name}"
        found[name] = (heading_args, block)
    return found


def normalized(annotation: str) -> str:
    return ast.unparse(ast.parse(annotation, mode="eval"))


def test_the_specs_are_found() -> None:
    # guards the other tests against finding nothing
    assert {"pgflow_event", "pgflow_register_executors", "pgflow_task_failed"} <= set(hook_specs())


def test_every_hook_is_documented_and_nothing_else() -> None:
    specs, docs = set(hook_specs()), set(documented())
    assert not specs - docs, f"hooks missing from docs/plugins.md: {sorted(specs - docs)}"
    assert not docs - specs, f"docs/plugins.md documents hooks that do not exist: {docs - specs}"


def test_documented_signatures_are_the_specs() -> None:
    docs = documented()
    for name, spec in hook_specs().items():
        heading_args, block = docs[name]
        signature = inspect.signature(spec)
        params = list(signature.parameters.values())
        assert [a.strip() for a in heading_args.split(",")] == [p.name for p in params], name
        tree = ast.parse(block.strip() + ": ...")
        function = tree.body[0]
        assert isinstance(function, ast.FunctionDef) and function.name == name, block
        documented_args = [
            (arg.arg, ast.unparse(arg.annotation) if arg.annotation else None)
            for arg in function.args.args
        ]
        assert documented_args == [(p.name, normalized(str(p.annotation))) for p in params], name
        assert function.returns is not None
        assert ast.unparse(function.returns) == normalized(str(signature.return_annotation))


def test_example_implementations_name_existing_hooks() -> None:
    specs = set(hook_specs())
    named = set(re.findall(r"^def (pgflow_\w+)\(", PAGE.read_text(), re.M))
    assert named, "docs/plugins.md shows no implementation"
    assert not named - specs, f"docs/plugins.md implements hooks that do not exist: {named - specs}"


def test_every_hook_has_a_test_of_its_own() -> None:
    this = Path(__file__).resolve()
    texts = [path.read_text() for path in TESTS.rglob("test_*.py") if path.resolve() != this]
    untested = sorted(name for name in hook_specs() if not any(name in text for text in texts))
    assert not untested, f"hooks no test names: {untested}"
