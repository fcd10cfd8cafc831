"""The flow DSL: a Flow is a DAG of steps declared with decorators.

    flow = Flow("site_report", max_attempts=3)

    @flow.step()
    def fetch(url: str, ctx): ...

    @flow.map(array=fetch)
    def score(item, ctx): ...

    @flow.step(depends_on=[fetch, score])
    def publish(deps, ctx): ...

Everything is validated as it is declared, so a flow that imports without error has a shape the
database accepts. See docs/flows.md for the user guide.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

import msgspec

from pgflow.errors import FlowDefinitionError, UnknownStepError
from pgflow.flow.handlers import HandlerSpec
from pgflow.flow.schedule import Schedule
from pgflow.flow.step import STEP_OPTION_NAMES, Step, StepOptions, StepType

if TYPE_CHECKING:
    from typing_extensions import Unpack

from pgflow.flow.validation import (
    check_flow_slug,
    check_mode,
    check_option,
    check_pattern,
    check_step_slug,
    describe,
)

__all__ = ["Flow", "StepRef"]

F = TypeVar("F", bound=Callable[..., Any])

_RAW_ELEMENTS: Final = msgspec.json.Decoder(list[msgspec.Raw])

#: A way to name a step: its slug, its Step object, or the function decorated as the step.
StepRef = str | Step | Callable[..., Any]


class Flow:
    """A named DAG of steps. Flow options are defaults that each step may override."""

    def __init__(
        self,
        slug: str,
        *,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        serializer: str | None = None,
        schedules: Iterable[Schedule] = (),
    ):
        self._slug = check_flow_slug(slug)
        self._schedules = _check_schedules(slug, schedules)
        if serializer is not None and (
            not isinstance(serializer, str) or not 1 <= len(serializer.strip()) <= 128
        ):
            raise FlowDefinitionError(
                f"flow {slug!r}: serializer must be the name of a registered serializer (a "
                f"non-empty string of at most 128 characters), got {serializer!r}",
                flow_slug=slug,
            )
        self._serializer = serializer.strip() if serializer is not None else None
        self._max_attempts = check_option(slug, None, "max_attempts", max_attempts, minimum=0)
        self._base_delay = check_option(slug, None, "base_delay", base_delay, minimum=0)
        self._timeout = check_option(slug, None, "timeout", timeout, minimum=1)
        self._steps: dict[str, Step] = {}
        # Lets a decorated function stand for its step in depends_on.
        self._slugs_by_handler: dict[object, list[str]] = {}

    def __repr__(self) -> str:
        return f"<Flow {self._slug} steps=[{', '.join(self._steps)}]>"

    @property
    def slug(self) -> str:
        return self._slug

    @property
    def max_attempts(self) -> int | None:
        """As set on the flow; None means the SQL default (3)."""
        return self._max_attempts

    @property
    def base_delay(self) -> int | None:
        """As set on the flow; None means the SQL default (1)."""
        return self._base_delay

    @property
    def timeout(self) -> int | None:
        """As set on the flow; None means the SQL default (60)."""
        return self._timeout

    @property
    def serializer(self) -> str | None:
        """The name of the serializer this flow's inputs and outputs go through, recorded with
        the flow in the database; None: the worker's default (msgspec unless it names another)."""
        return self._serializer

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The schedules declared with the flow: each worker serving the flow makes the
        database's code-declared schedules match them when it starts (docs/schedules.md)."""
        return self._schedules

    @property
    def steps(self) -> tuple[Step, ...]:
        """All steps in definition order (a topological order)."""
        return tuple(self._steps.values())

    def get_step(self, slug: str) -> Step:
        try:
            return self._steps[slug]
        except KeyError:
            known = ", ".join(self._steps) or "none"
            raise UnknownStepError(
                f"{describe(self._slug)} has no step {slug!r} (its steps: {known}); the worker "
                "and the database may be running different versions of the flow",
                flow_slug=self._slug,
                step_slug=slug,
            ) from None

    def descendants(self, slug: str) -> tuple[Step, ...]:
        """The steps that depend on `slug`, directly or through others, in definition order."""
        self.get_step(slug)
        reached = {slug}
        found = []
        for step in self._steps.values():  # definition order is topological
            if any(dep in reached for dep in step.dependencies):
                reached.add(step.slug)
                found.append(step)
        return tuple(found)

    def __contains__(self, slug: object) -> bool:
        return slug in self._steps

    def __len__(self) -> int:
        return len(self._steps)

    # -- decorators ------------------------------------------------------------------------------

    @overload
    def step(self, slug: F, /) -> F: ...

    @overload
    def step(
        self,
        slug: str | None = None,
        *,
        depends_on: Iterable[StepRef] = (),
        **options: Unpack[StepOptions],
    ) -> Callable[[F], F]: ...

    def step(
        self,
        slug: str | Callable[..., Any] | None = None,
        *,
        depends_on: Iterable[StepRef] = (),
        **options: Unpack[StepOptions],
    ) -> Any:
        """Declare a single step. The decorated function is returned unchanged.

        A root step (no `depends_on`) receives the run input; a dependent step receives
        `{dependency_slug: output}` of its completed dependencies. `options` are those of
        `StepOptions` (retries, timeout, start delay, conditions).
        """

        def register(function: F, slug: str | None) -> F:
            dependencies = self._dependency_list(function, slug, depends_on)
            self._add(function, slug, "single", dependencies, options)
            return function

        if callable(slug):
            # Used bare: `@flow.step` without parentheses.
            return register(slug, None)
        return lambda function: register(function, slug)

    @overload
    def map(self, slug: F, /) -> F: ...

    @overload
    def map(
        self,
        slug: str | None = None,
        *,
        array: StepRef | Sequence[StepRef] | None = None,
        **options: Unpack[StepOptions],
    ) -> Callable[[F], F]: ...

    def map(
        self,
        slug: str | Callable[..., Any] | None = None,
        *,
        array: StepRef | Sequence[StepRef] | None = None,
        **options: Unpack[StepOptions],
    ) -> Any:
        """Declare a map step: one task per element of an array, outputs gathered in order.

        `array` names the step whose output is the array; leave it out to map over the run
        input, which then must be a JSON array. The handler receives one element. `options` are
        those of `StepOptions`, as for `step`.
        """

        def register(function: F, slug: str | None) -> F:
            self._add(function, slug, "map", self._array_source(function, slug, array), options)
            return function

        if callable(slug):
            # Used bare: `@flow.map` without parentheses maps over the run input.
            return register(slug, None)
        return lambda function: register(function, slug)

    # -- shape -----------------------------------------------------------------------------------

    def shape(self) -> dict[str, Any]:
        """The flow's shape, as `pgflow.ensure_flow_compiled` expects it.

        `{"steps": [<step shape>, ...], "options": {...}}` with steps in definition order; each
        step is `{"slug", "stepType", "dependencies" (sorted), "whenUnmet", "whenExhausted",
        "requiredInputPattern", "forbiddenInputPattern", "options"}`, a pattern being
        `{"defined": false}` or `{"defined": true, "value": {...}}`. Only options that were set
        appear under "options" (keys maxAttempts, baseDelay, timeout and serializer, and for
        steps startDelay). A new dict is built on each call.
        """
        options: dict[str, Any] = {}
        for key, value in (
            ("maxAttempts", self._max_attempts),
            ("baseDelay", self._base_delay),
            ("timeout", self._timeout),
        ):
            if value is not None:
                options[key] = value
        if self._serializer is not None:
            options["serializer"] = self._serializer
        return {"steps": [step.shape() for step in self._steps.values()], "options": options}

    # -- run input -------------------------------------------------------------------------------

    def check_run_input(self, run_input: bytes) -> None:
        """Raise `InputValidationError`, with the message a worker would fail the task with, when
        the run input (JSON text) does not fit the type a root step's handler declares (each
        element, for a root map step). Untyped root steps take anything; an input that a root
        map step cannot map over is left for `pgflow.start_flow` to refuse."""
        for step in self._steps.values():
            if not step.is_root or step.input_type is None:
                continue
            if not step.is_map:
                step.convert_input_raw(run_input)
                continue
            try:
                # each element's own JSON text, as the worker cuts it out of the array
                elements = _RAW_ELEMENTS.decode(run_input)
            except msgspec.ValidationError:
                continue
            for element in elements:
                step.convert_input_raw(memoryview(element))

    # -- internals -------------------------------------------------------------------------------

    def _add(
        self,
        function: Callable[..., Any],
        slug: str | None,
        step_type: StepType,
        dependency_refs: Sequence[StepRef],
        options: StepOptions,
    ) -> Step:
        flow = self._slug
        step_slug = self._step_slug(function, slug)
        if step_slug in self._steps:
            existing = _function_name(self._steps[step_slug].handler)
            raise FlowDefinitionError(
                f"{describe(flow)} already has a step {step_slug!r} (handler {existing}); "
                "step slugs must be unique within a flow, so give this one another name with "
                "slug=...",
                flow_slug=flow,
                step_slug=step_slug,
            )
        _check_option_names(flow, step_slug, options)
        dependencies = self._resolve_dependencies(step_slug, dependency_refs)
        required = check_pattern(flow, step_slug, "if_", options.get("if_"))
        forbidden = check_pattern(flow, step_slug, "if_not", options.get("if_not"))
        for name, pattern in (("if_", required), ("if_not", forbidden)):
            self._check_pattern_keys(step_slug, dependencies, name, pattern)

        def number(name: str, minimum: int) -> int | None:
            return check_option(flow, step_slug, name, options.get(name), minimum=minimum)

        step = Step(
            flow=self,
            slug=step_slug,
            step_type=step_type,
            dependencies=dependencies,
            max_attempts=number("max_attempts", 0),
            base_delay=number("base_delay", 0),
            timeout=number("timeout", 1),
            start_delay=number("start_delay", 0),
            required_input_pattern=required,
            forbidden_input_pattern=forbidden,
            when_unmet=check_mode(flow, step_slug, "when_unmet", options.get("when_unmet", "skip")),
            when_exhausted=check_mode(
                flow, step_slug, "when_exhausted", options.get("when_exhausted", "fail")
            ),
            handler=HandlerSpec(flow, step_slug, function),
        )
        self._steps[step_slug] = step
        self._slugs_by_handler.setdefault(_handler_key(function), []).append(step_slug)
        return step

    def _step_slug(self, function: Callable[..., Any], slug: str | None) -> str:
        if slug is not None:
            return check_step_slug(self._slug, slug, from_function=False)
        name = getattr(function, "__name__", None)
        if name is None:
            raise FlowDefinitionError(
                f"{describe(self._slug)}: the handler {function!r} has no __name__ to use as "
                "the step slug; pass one with slug=...",
                flow_slug=self._slug,
            )
        return check_step_slug(self._slug, name, from_function=True)

    def _dependency_list(
        self, function: Callable[..., Any], slug: str | None, depends_on: object
    ) -> Sequence[StepRef]:
        if isinstance(depends_on, (str, Step)) or callable(depends_on):
            step_slug = slug if slug is not None else getattr(function, "__name__", "?")
            name = depends_on.slug if isinstance(depends_on, Step) else _ref_name(depends_on)
            raise FlowDefinitionError(
                f"{describe(self._slug, step_slug)}: depends_on must be a list, got a single "
                f"step; write depends_on=[{name}]",
                flow_slug=self._slug,
                step_slug=step_slug,
            )
        if not isinstance(depends_on, Iterable) or isinstance(depends_on, (bytes, dict)):
            step_slug = slug if slug is not None else getattr(function, "__name__", "?")
            raise FlowDefinitionError(
                f"{describe(self._slug, step_slug)}: depends_on must be a list of steps, got "
                f"{type(depends_on).__name__}",
                flow_slug=self._slug,
                step_slug=step_slug,
            )
        return tuple(depends_on)

    def _array_source(
        self, function: Callable[..., Any], slug: str | None, array: object
    ) -> Sequence[StepRef]:
        if array is None:
            return ()
        if isinstance(array, (str, Step)) or callable(array):
            return (array,)
        step_slug = slug if slug is not None else getattr(function, "__name__", "?")
        if isinstance(array, Sequence):
            if len(array) == 1:
                return (array[0],)
            names = ", ".join(_ref_name(ref) for ref in array)
            raise FlowDefinitionError(
                f"{describe(self._slug, step_slug)}: a map step takes its array from exactly "
                f"one step, but {len(array)} were given ({names}); pass one step as array=..., "
                "or leave array out to map over the run input",
                flow_slug=self._slug,
                step_slug=step_slug,
            )
        raise FlowDefinitionError(
            f"{describe(self._slug, step_slug)}: array must be a step (its function, slug or "
            f"Step) or None for the run input, got {type(array).__name__}",
            flow_slug=self._slug,
            step_slug=step_slug,
        )

    def _resolve_dependencies(self, step_slug: str, refs: Sequence[StepRef]) -> tuple[str, ...]:
        slugs: list[str] = []
        for ref in refs:
            dependency = self._resolve_ref(step_slug, ref)
            if dependency in slugs:
                raise FlowDefinitionError(
                    f"{describe(self._slug, step_slug)} lists dependency {dependency!r} more "
                    "than once; list each dependency once",
                    flow_slug=self._slug,
                    step_slug=step_slug,
                )
            slugs.append(dependency)
        return tuple(slugs)

    def _resolve_ref(self, step_slug: str, ref: object) -> str:
        where = describe(self._slug, step_slug)
        if isinstance(ref, Step):
            if ref.flow is not self:
                raise FlowDefinitionError(
                    f"{where} depends on step {ref.slug!r} of another flow "
                    f"({ref.flow.slug!r}); a step can only depend on steps of its own flow",
                    flow_slug=self._slug,
                    step_slug=step_slug,
                )
            return ref.slug
        if isinstance(ref, str):
            if ref == step_slug:
                raise FlowDefinitionError(
                    f"{where} depends on itself; a step cannot be its own dependency (that "
                    "would be a cycle)",
                    flow_slug=self._slug,
                    step_slug=step_slug,
                )
            if ref not in self._steps:
                known = ", ".join(self._steps) or "none yet"
                raise FlowDefinitionError(
                    f"{where} depends on {ref!r}, which is not defined (yet); define {ref!r} "
                    f"above {step_slug!r}: a step can only depend on steps defined before it, "
                    f"which also keeps the flow free of cycles (steps so far: {known})",
                    flow_slug=self._slug,
                    step_slug=step_slug,
                )
            return ref
        if callable(ref):
            registered = self._slugs_by_handler.get(_handler_key(ref), [])
            if len(registered) == 1:
                return registered[0]
            name = _function_name(ref)
            if not registered:
                raise FlowDefinitionError(
                    f"{where} depends on {name}, which is not a step of this flow; decorate it "
                    f"with @flow.step() above {step_slug!r}, or name the dependency by its slug",
                    flow_slug=self._slug,
                    step_slug=step_slug,
                )
            raise FlowDefinitionError(
                f"{where} depends on {name}, which is registered as several steps "
                f"({', '.join(registered)}); name the dependency by its slug instead",
                flow_slug=self._slug,
                step_slug=step_slug,
            )
        raise FlowDefinitionError(
            f"{where}: a dependency must be a step's function, slug or Step, got "
            f"{type(ref).__name__} ({ref!r})",
            flow_slug=self._slug,
            step_slug=step_slug,
        )

    def _check_pattern_keys(
        self,
        step_slug: str,
        dependencies: tuple[str, ...],
        name: str,
        pattern: dict[str, Any] | None,
    ) -> None:
        # A dependent step's condition is matched against {dependency slug: output}; a key that
        # is not a dependency can never be present, so the condition would be decided in advance.
        if pattern is None or not dependencies:
            return
        strangers = [key for key in pattern if key not in dependencies]
        if strangers:
            raise FlowDefinitionError(
                f"{describe(self._slug, step_slug)}: {name} refers to "
                f"{', '.join(repr(key) for key in strangers)}, which is not among its "
                f"dependencies ({', '.join(dependencies)}); a dependent step's condition is "
                'matched against {dependency_slug: output}, e.g. {"'
                f'{dependencies[0]}": {{"ok": true}}}}',
                flow_slug=self._slug,
                step_slug=step_slug,
            )


def _check_option_names(flow_slug: str, step_slug: str, options: Mapping[str, object]) -> None:
    unknown = sorted(set(options) - STEP_OPTION_NAMES)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, STEP_OPTION_NAMES, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    raise FlowDefinitionError(
        f"{describe(flow_slug, step_slug)}: unknown option {', '.join(hints)}; a step takes "
        f"{', '.join(sorted(STEP_OPTION_NAMES))}",
        flow_slug=flow_slug,
        step_slug=step_slug,
    )


def _handler_key(function: object) -> object:
    # Hashable callables are keyed by equality, so `obj.method` matches the step registered from
    # another `obj.method` access (each access creates a new bound-method object). Others are
    # keyed by identity; the Step keeps them alive, so their ids are not reused meanwhile.
    try:
        hash(function)
    except TypeError:
        return ("id", id(function))
    return function


def _function_name(function: object) -> str:
    qualname = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    return f"{qualname}()" if qualname else repr(function)


def _ref_name(ref: object) -> str:
    if isinstance(ref, Step):
        return ref.slug
    if isinstance(ref, str):
        return repr(ref)
    return getattr(ref, "__name__", None) or repr(ref)


def _check_schedules(slug: str, schedules: Iterable[Schedule]) -> tuple[Schedule, ...]:
    if isinstance(schedules, Schedule):
        schedules = (schedules,)
    found = tuple(schedules)
    names: set[str] = set()
    for item in found:
        if not isinstance(item, Schedule):
            raise FlowDefinitionError(
                f"flow {slug!r}: schedules must be pgflow.Schedule objects, got {item!r}",
                flow_slug=slug,
            )
        if item.name in names:
            raise FlowDefinitionError(
                f"flow {slug!r}: two schedules are named {item.name!r}; give each its own name",
                flow_slug=slug,
            )
        names.add(item.name)
    return found
