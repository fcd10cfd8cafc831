"""Every exception pgflow raises is defined in pgflow/errors.py, under PgflowError, listed in its
`__all__` and exported from `pgflow`: one place to look them up (docs/architecture.md)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pgflow
import pgflow.errors as errors


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(pgflow.__path__, prefix="pgflow."):
        if info.name in ("pgflow._core", "pgflow.__main__"):
            continue  # the Rust extension (its errors are errors.py's), the command's entry
        names.append(info.name)
    return names


def _exceptions(module: object) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == getattr(module, "__name__", None)
    ]


def test_every_exception_of_errors_py_is_a_pgflow_error_listed_and_exported() -> None:
    defined = _exceptions(errors)
    assert defined, "errors.py defines no exception?"
    for exc in defined:
        assert issubclass(exc, errors.PgflowError), exc
        assert exc.__name__ in errors.__all__, f"{exc.__name__} is missing from errors.__all__"
        assert getattr(pgflow, exc.__name__, None) is exc, f"pgflow does not export {exc}"
        assert exc.__name__ in pgflow.__all__, f"{exc.__name__} is missing from pgflow.__all__"


@pytest.mark.parametrize("name", [n for n in _modules() if n != "pgflow.errors"])
def test_no_other_module_defines_an_exception(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{name} needs what is not installed: {exc}")
    assert _exceptions(module) == [], f"{name} defines exceptions: move them to errors.py"
