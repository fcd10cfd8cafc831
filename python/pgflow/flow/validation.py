"""Definition-time checks for flows and steps.

Each check mirrors a rule that the SQL contract enforces, so a mistake is reported where the flow
is written, naming the flow, the step and the fix, instead of surfacing later as a constraint
violation inside Postgres.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, cast

import msgspec

from pgflow.errors import FlowDefinitionError

SLUG_PATTERN: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_SLUG_LENGTH: Final = 128
# A flow slug doubles as its pgmq queue name, and pgmq refuses queue names longer than this.
MAX_FLOW_SLUG_LENGTH: Final = 47
RESERVED_SLUGS: Final = frozenset({"run"})
# Options are stored in Postgres `int` columns.
MAX_OPTION_VALUE: Final = 2**31 - 1
Mode = Literal["fail", "skip", "skip-cascade"]
MODES: Final = ("fail", "skip", "skip-cascade")


def describe(flow_slug: str, step_slug: str | None = None) -> str:
    """The "where" part of an error message."""
    if step_slug is None:
        return f"flow {flow_slug!r}"
    return f"step {step_slug!r} of flow {flow_slug!r}"


def check_flow_slug(slug: object) -> str:
    if not isinstance(slug, str):
        raise FlowDefinitionError(
            f"a flow slug must be a string, got {type(slug).__name__} ({slug!r}); "
            'write Flow("my_flow")'
        )
    _check_slug_text(slug, subject=f"flow slug {slug!r}", fix="choose another flow slug", flow=slug)
    if len(slug) > MAX_FLOW_SLUG_LENGTH:
        raise FlowDefinitionError(
            f"flow slug {slug!r} is {len(slug)} characters long; a flow slug is also the name "
            f"of its pgmq queue, which is limited to {MAX_FLOW_SLUG_LENGTH} characters; "
            "choose a shorter flow slug",
            flow_slug=slug,
        )
    return slug


def check_step_slug(flow_slug: str, slug: object, *, from_function: bool) -> str:
    fix = (
        "pass a valid slug with @flow.step(slug=...) or rename the function"
        if from_function
        else "choose another step slug"
    )
    if not isinstance(slug, str):
        raise FlowDefinitionError(
            f"{describe(flow_slug)}: a step slug must be a string, got "
            f"{type(slug).__name__} ({slug!r}); {fix}",
            flow_slug=flow_slug,
        )
    _check_slug_text(
        slug,
        subject=f"{describe(flow_slug, slug)}: the step slug",
        fix=fix,
        flow=flow_slug,
        step=slug,
    )
    return slug


def _check_slug_text(
    slug: str, *, subject: str, fix: str, flow: str, step: str | None = None
) -> None:
    if not slug:
        problem = "is empty"
    elif len(slug) > MAX_SLUG_LENGTH:
        problem = f"is {len(slug)} characters long (the limit is {MAX_SLUG_LENGTH})"
    elif not SLUG_PATTERN.match(slug):
        problem = (
            "must start with a letter or underscore and contain only letters, digits and "
            f"underscores (pattern {SLUG_PATTERN.pattern})"
        )
    elif slug in RESERVED_SLUGS:
        problem = "is a reserved word"
    else:
        return
    raise FlowDefinitionError(f"{subject} {problem}; {fix}", flow_slug=flow, step_slug=step)


def check_option(
    flow_slug: str, step_slug: str | None, name: str, value: object, *, minimum: int
) -> int | None:
    """Validate an integer option; `None` means "not set" (inherit)."""
    if value is None:
        return None
    where = describe(flow_slug, step_slug)
    # bool is an int subclass, but `max_attempts=True` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlowDefinitionError(
            f"{where}: {name} must be a whole number of "
            f"{'attempts' if name == 'max_attempts' else 'seconds'}, got "
            f"{type(value).__name__} ({value!r}); pass an int such as {name}={max(minimum, 1)}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    if value < minimum:
        bound = "0 or more" if minimum == 0 else f"at least {minimum}"
        raise FlowDefinitionError(
            f"{where}: {name} must be {bound}, got {value}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    if value > MAX_OPTION_VALUE:
        raise FlowDefinitionError(
            f"{where}: {name} must be at most {MAX_OPTION_VALUE} (a Postgres int), got {value}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    return value


def check_mode(flow_slug: str, step_slug: str, name: str, value: object) -> Mode:
    if not isinstance(value, str) or value not in MODES:
        allowed = ", ".join(repr(mode) for mode in MODES)
        raise FlowDefinitionError(
            f"{describe(flow_slug, step_slug)}: {name} must be one of {allowed}, got {value!r}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    return cast(Mode, value)


def check_pattern(
    flow_slug: str, step_slug: str, name: str, value: object
) -> dict[str, Any] | None:
    """Validate a condition pattern and return a JSON-normalised private copy of it."""
    if value is None:
        return None
    where = describe(flow_slug, step_slug)
    if not isinstance(value, dict):
        raise FlowDefinitionError(
            f"{where}: {name} must be a JSON object (a dict), got {type(value).__name__} "
            f'({value!r}); for example {name}={{"status": "ok"}}',
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    try:
        # A round trip through JSON both proves the pattern is serialisable and detaches it from
        # the caller's dict, so later mutation cannot change the flow's shape.
        copy = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as exc:
        raise FlowDefinitionError(
            f"{where}: {name} must contain only JSON values (dict, list, str, int, float, "
            f"bool, None): {exc}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        ) from exc
    assert isinstance(copy, dict)
    return copy
