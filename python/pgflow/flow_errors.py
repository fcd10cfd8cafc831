"""Errors raised while defining, loading and invoking flows.

`pgflow.flow` re-exports every class here; import them from there.
"""

from __future__ import annotations

from pgflow.errors import PgflowError


class FlowDefinitionError(PgflowError):
    """A flow or one of its steps is defined wrongly (raised at definition time)."""

    def __init__(self, message: str, *, flow_slug: str | None = None, step_slug: str | None = None):
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug


class UnknownStepError(PgflowError, LookupError):
    """A step slug was looked up that the flow does not define."""

    def __init__(self, message: str, *, flow_slug: str, step_slug: str):
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug


class FlowLoadError(PgflowError):
    """A "module:attribute" flow reference could not be resolved to a Flow."""

    def __init__(self, message: str, *, ref: str):
        super().__init__(message)
        self.ref = ref


class InputValidationError(PgflowError):
    """A task input does not match the type its handler declares."""

    def __init__(self, message: str, *, flow_slug: str, step_slug: str, reason: str):
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.reason = reason


class HandlerOutputError(PgflowError):
    """A handler returned a value that cannot be turned into JSON."""

    def __init__(self, message: str, *, flow_slug: str, step_slug: str):
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug
