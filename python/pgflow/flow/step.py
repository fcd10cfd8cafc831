"""A step of a flow: its place in the graph, its options and its handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from pgflow.flow.handlers import HandlerSpec
from pgflow.flow.validation import Mode

if TYPE_CHECKING:
    from pgflow.flow.definition import Flow

StepType = Literal["single", "map"]


class StepOptions(TypedDict, total=False):
    """The options `@flow.step(...)` and `@flow.map(...)` both take, as keyword arguments.

    Numbers left out (or None) inherit the flow's value, then the SQL default.
    """

    max_attempts: int | None
    """Attempts before the step's `when_exhausted` applies (0 and 1 both mean no retry)."""
    base_delay: int | None
    """Seconds before the first retry; each retry waits twice as long as the one before."""
    timeout: int | None
    """Seconds a handler may run before the task counts as failed."""
    start_delay: int | None
    """Seconds to wait before the step's tasks become visible the first time."""
    if_: dict[str, Any] | None
    """Run the step only when its input contains this JSON (jsonb `@>`)."""
    if_not: dict[str, Any] | None
    """Run the step only when its input does not contain this JSON."""
    when_unmet: Mode
    """What an unmet condition does: "skip" (default), "skip-cascade" or "fail"."""
    when_exhausted: Mode
    """What a task out of attempts does: "fail" (default), "skip" or "skip-cascade"."""


STEP_OPTION_NAMES: Final = frozenset(StepOptions.__annotations__)

# What the SQL contract uses when neither the step nor the flow sets an option.
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_BASE_DELAY: Final = 5  # what pgflow.create_flow uses for NULL
DEFAULT_TIMEOUT: Final = 60
DEFAULT_START_DELAY: Final = 0


class Step:
    """One step of a Flow. Created by `@flow.step()` / `@flow.map()`, never directly."""

    __slots__ = (
        "_handler",
        "base_delay",
        "dependencies",
        "flow",
        "forbidden_input_pattern",
        "max_attempts",
        "required_input_pattern",
        "slug",
        "start_delay",
        "step_type",
        "timeout",
        "when_exhausted",
        "when_unmet",
    )

    def __init__(
        self,
        *,
        flow: Flow,
        slug: str,
        step_type: StepType,
        dependencies: tuple[str, ...],
        handler: HandlerSpec,
        max_attempts: int | None,
        base_delay: int | None,
        timeout: int | None,
        start_delay: int | None,
        required_input_pattern: dict[str, Any] | None,
        forbidden_input_pattern: dict[str, Any] | None,
        when_unmet: Mode,
        when_exhausted: Mode,
    ):
        self.flow = flow
        self.slug = slug
        self.step_type: StepType = step_type
        #: Slugs of the steps this one depends on, in the order they were declared.
        self.dependencies = dependencies
        self._handler = handler
        #: Options as set on the step; None means "inherit from the flow".
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self.start_delay = start_delay
        self.required_input_pattern = required_input_pattern
        self.forbidden_input_pattern = forbidden_input_pattern
        self.when_unmet: Mode = when_unmet
        self.when_exhausted: Mode = when_exhausted

    def __repr__(self) -> str:
        deps = ", ".join(self.dependencies)
        return f"<Step {self.flow.slug}.{self.slug} {self.step_type} deps=[{deps}]>"

    # -- graph -----------------------------------------------------------------------------------

    @property
    def is_map(self) -> bool:
        return self.step_type == "map"

    @property
    def is_root(self) -> bool:
        """A root step has no dependencies and receives the run input (an element, for a map)."""
        return not self.dependencies

    # -- options, resolved the way the SQL resolves them -----------------------------------------

    @property
    def effective_max_attempts(self) -> int:
        return _first_set(self.max_attempts, self.flow.max_attempts, DEFAULT_MAX_ATTEMPTS)

    @property
    def effective_base_delay(self) -> int:
        return _first_set(self.base_delay, self.flow.base_delay, DEFAULT_BASE_DELAY)

    @property
    def effective_timeout(self) -> int:
        return _first_set(self.timeout, self.flow.timeout, DEFAULT_TIMEOUT)

    @property
    def effective_start_delay(self) -> int:
        return DEFAULT_START_DELAY if self.start_delay is None else self.start_delay

    # -- handler ---------------------------------------------------------------------------------

    @property
    def handler(self) -> Callable[..., Any]:
        return self._handler.function

    @property
    def is_async(self) -> bool:
        return self._handler.is_async

    @property
    def accepts_context(self) -> bool:
        """Whether the handler is called as `handler(input, ctx)` rather than `handler(input)`."""
        return self._handler.accepts_context

    @property
    def input_type(self) -> Any:
        """The type the input is converted to before the call, or None (passed as is)."""
        return self._handler.input_type

    def convert_input(self, value: Any) -> Any:
        """Convert a JSON-shaped value to the handler's input type (no-op when untyped).

        Raises InputValidationError when the value does not fit the type.
        """
        return self._handler.convert_input(value)

    def convert_input_raw(self, raw: bytes | bytearray | memoryview | str) -> Any:
        """Decode raw JSON straight into the handler's input type (plain JSON when untyped).

        Raises InputValidationError when the JSON is malformed or does not fit the type.
        """
        return self._handler.convert_input_raw(raw)

    def invoke(self, value: Any, ctx: object = None, *, convert: bool = True) -> Any:
        """Call the handler synchronously and return its output.

        `value` is converted to the input type first unless `convert` is False (for input that
        already went through `convert_input_raw`). An async handler is run to completion with
        `asyncio.run`, which requires that no event loop is running in this thread.
        """
        handler = self._handler
        return handler.call(handler.convert_input(value) if convert else value, ctx)

    async def invoke_async(self, value: Any, ctx: object = None, *, convert: bool = True) -> Any:
        """Call the handler from a coroutine, awaiting it when it is async.

        A sync handler runs directly in the calling thread; executors that must not block
        their event loop should call `invoke` in a worker thread instead.
        """
        handler = self._handler
        return await handler.call_async(handler.convert_input(value) if convert else value, ctx)

    def to_builtins(self, output: Any) -> Any:
        """Turn handler output (Structs, dataclasses, ...) into plain JSON-shaped values.

        Raises HandlerOutputError when the output has no JSON form.
        """
        return self._handler.to_builtins(output)

    # -- shape -----------------------------------------------------------------------------------

    def shape(self) -> dict[str, Any]:
        """This step's entry in `Flow.shape()`."""
        options: dict[str, int] = {}
        for key, value in (
            ("maxAttempts", self.max_attempts),
            ("baseDelay", self.base_delay),
            ("timeout", self.timeout),
            ("startDelay", self.start_delay),
        ):
            if value is not None:
                options[key] = value
        return {
            "slug": self.slug,
            "stepType": self.step_type,
            "dependencies": sorted(self.dependencies),
            "whenUnmet": self.when_unmet,
            "whenExhausted": self.when_exhausted,
            "requiredInputPattern": _pattern_shape(self.required_input_pattern),
            "forbiddenInputPattern": _pattern_shape(self.forbidden_input_pattern),
            "options": options,
        }


def _first_set(step_value: int | None, flow_value: int | None, default: int) -> int:
    if step_value is not None:
        return step_value
    if flow_value is not None:
        return flow_value
    return default


def _pattern_shape(pattern: dict[str, Any] | None) -> dict[str, Any]:
    if pattern is None:
        return {"defined": False}
    # A fresh copy each time: callers may serialise or mutate the shape freely.
    return {"defined": True, "value": _json_copy(pattern)}


def _json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value
