"""The flow DSL, with no database: `Flow`, its steps and their options, handler signatures and
typed inputs, definition-time validation, and `load_flow("module:attr")`.

    flow = Flow("site_report", max_attempts=3)

    @flow.step()
    def fetch(url: str, ctx): ...

    @flow.map(array=fetch)
    def score(item, ctx): ...

Everything is validated as it is declared, so a flow that imports without error has a shape the
database accepts. See docs/flows.md for the user guide.
"""

from __future__ import annotations

from pgflow.errors import (
    FlowDefinitionError,
    FlowLoadError,
    HandlerOutputError,
    InputValidationError,
    UnknownStepError,
)
from pgflow.flow.definition import Flow, StepRef
from pgflow.flow.loading import load_flow
from pgflow.flow.schedule import Schedule
from pgflow.flow.step import (
    DEFAULT_BASE_DELAY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_START_DELAY,
    DEFAULT_TIMEOUT,
    Step,
    StepType,
)
from pgflow.flow.validation import Mode

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_START_DELAY",
    "DEFAULT_TIMEOUT",
    "Flow",
    "FlowDefinitionError",
    "FlowLoadError",
    "HandlerOutputError",
    "InputValidationError",
    "Mode",
    "Schedule",
    "Step",
    "StepRef",
    "StepType",
    "UnknownStepError",
    "load_flow",
]
