"""Compiling a flow into the database: one statement, and what its answer means.

The worker (for every flow it serves), `Client.start` and `AsyncClient.start` (for a `Flow`
object) all call `pgflow.ensure_flow_compiled` through this module, so a flow that differs from
the database raises the same `FlowMismatch` with the same advice wherever it is found, and a
flow without steps (which could only start runs that do nothing) the same `FlowDefinitionError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from pgflow.errors import FlowDefinitionError, FlowMismatch

ENSURE_FLOW_COMPILED = "select pgflow.ensure_flow_compiled(%s, %s, %s) as result"


def compile_params(
    flow_slug: str, shape: Mapping[str, Any], allow_data_loss: bool = False
) -> tuple[str, Jsonb, bool]:
    """The parameters of `ENSURE_FLOW_COMPILED` for a flow's shape (`Flow.shape()`); raises
    `FlowDefinitionError` for a flow without steps."""
    check_has_steps(flow_slug, len(shape.get("steps") or ()))
    return flow_slug, Jsonb(dict(shape)), allow_data_loss


def check_has_steps(flow_slug: str, step_count: int) -> None:
    """Refuse a flow without steps (before it is compiled, served or started)."""
    if step_count == 0:
        raise FlowDefinitionError(
            f"flow {flow_slug!r} has no steps: define at least one with @flow.step() (or "
            "@flow.map()) before compiling, serving or starting it; is the module that "
            "defines its steps imported?",
            flow_slug=flow_slug,
        )


def check_compiled(flow_slug: str, result: Mapping[str, Any] | None) -> str:
    """The status `ensure_flow_compiled` answered (`compiled`, `verified` or `recompiled`);
    raises `FlowMismatch` naming the differences when it answered `mismatch`."""
    result = result or {}
    status = str(result.get("status"))
    if status != "mismatch":
        return status
    differences = [str(d) for d in result.get("differences") or []]
    raise FlowMismatch(
        f"flow {flow_slug!r} in the database differs from the code: {'; '.join(differences)}. "
        "Deploy the changed flow under a new slug, or replace it as the database owner with "
        "`pgflow worker --allow-data-loss` (this deletes the flow's runs)",
        flow_slug=flow_slug,
        differences=differences,
    )
