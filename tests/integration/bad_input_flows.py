"""Flows for the bad-input tests (docs/reliability.md): handlers that return what cannot be
stored, and one that echoes its input. Module level, importable by "module:attribute", for the
process executor's children; imports nothing from pytest or the tests."""

from __future__ import annotations

from typing import Any

from pgflow.flow import Flow

bad_results = Flow("bi_bad_results", max_attempts=5, base_delay=60)


@bad_results.step()
def produce(value: Any) -> Any:
    kind = value["kind"]
    if kind == "big":
        return "x" * int(value["size"])
    if kind == "nul":
        return {"text": "before\x00after"}
    if kind == "deep":
        deep: list[Any] = []
        inner = deep
        for _ in range(100_000):
            inner.append([])
            inner = inner[0]
        return deep
    return {"ok": kind}


echo = Flow("bi_echo", max_attempts=1)


@echo.step()
def same(value: Any) -> Any:
    return value
