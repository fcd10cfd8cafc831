"""How a step's handler is called: signature analysis, typed inputs and output conversion.

A handler takes the task input and, optionally, a context: `def handler(input)` or
`def handler(input, ctx)`, sync or `async def`. When the input parameter is annotated with a type
msgspec can build from JSON (a Struct, dataclass, TypedDict, `int`, `list[Item]`, ...), the input is
converted to that type before the call. Other annotations (a pydantic model, ...) are handed to the
type adapters plugins register (`pgflow_register_type_adapters`), found through a lookup the
plugins layer installs here (`use_type_adapters`): this layer sits below the plugins and must not
import them. Everything about the handler that can be decided once is decided here at definition
time, so a call does no introspection.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

import msgspec
import msgspec.inspect

from pgflow.codec import encode_unknown
from pgflow.errors import (
    ExecutorError,
    FlowDefinitionError,
    HandlerOutputError,
    InputValidationError,
    one_line,
)
from pgflow.flow.validation import describe

_POSITIONAL: Final = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)
# Values that are already JSON-shaped need no conversion on the way out.
_JSON_SCALARS: Final = (str, int, float, bool, type(None))
# An untyped decoder for the raw fast path of untyped handlers; one instance, reused.
_ANY_DECODER: Final = msgspec.json.Decoder()


class InputConverter(Protocol):
    """Builds a handler's typed input; made by a plugin's type adapter, once per handler.

    Both methods raise `ValueError` (pydantic's `ValidationError` is one) for input that does not
    fit, with a message saying what and where; the task then fails without retries.
    """

    def from_json(self, raw: bytes | str) -> Any:
        """The input from its JSON text (what a worker claims)."""
        ...

    def from_value(self, value: Any) -> Any:
        """The input from JSON-shaped Python values, or from a value already of the type (which
        it should hand back cheaply)."""
        ...


InputTypeLookup = Callable[[Any], InputConverter]
"""`annotation -> converter` from the type adapters plugins register. Raises `LookupError`, saying
why, when none handles the annotation; any other exception is an adapter that failed."""

_type_lookup: InputTypeLookup | None = None


def use_type_adapters(lookup: InputTypeLookup) -> None:
    """Install the lookup of plugins' type adapters (the plugins layer does, when imported)."""
    global _type_lookup
    _type_lookup = lookup


class HandlerSpec:
    """What was learnt about a handler when its step was defined."""

    __slots__ = (
        "_converter",
        "_decoder",
        "_flow_slug",
        "_step_slug",
        "accepts_context",
        "function",
        "input_type",
        "is_async",
    )

    def __init__(self, flow_slug: str, step_slug: str, function: Callable[..., Any]):
        self._flow_slug = flow_slug
        self._step_slug = step_slug
        where = describe(flow_slug, step_slug)
        if not callable(function):
            raise FlowDefinitionError(
                f"{where}: the handler must be callable, got {type(function).__name__}; "
                "decorate a function with @flow.step()",
                flow_slug=flow_slug,
                step_slug=step_slug,
            )
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise FlowDefinitionError(
                f"{where}: the handler is a generator (it uses `yield`); a handler must return "
                "its output, so collect the values into a list and return it",
                flow_slug=flow_slug,
                step_slug=step_slug,
            )
        self.function = function
        self.is_async = _is_async(function)
        first, self.accepts_context = _analyse_signature(where, flow_slug, step_slug, function)
        typed: tuple[Any, InputConverter | None] = (
            (None, None)
            if first is None
            else _input_type(where, flow_slug, step_slug, function, first)
        )
        self.input_type, self._converter = typed
        self._decoder: msgspec.json.Decoder[Any] = (
            _ANY_DECODER
            if self.input_type is None or self._converter is not None
            else msgspec.json.Decoder(self.input_type)
        )

    # -- input ---------------------------------------------------------------------------------

    def convert_input(self, value: Any) -> Any:
        if self.input_type is None:
            return value
        if self._converter is not None:
            return self._adapted(self._converter.from_value, value)
        try:
            return msgspec.convert(value, type=self.input_type)
        except msgspec.ValidationError as exc:
            raise self._input_error(str(exc)) from exc

    def convert_input_raw(self, raw: bytes | bytearray | memoryview | str) -> Any:
        if self._converter is not None:
            text = raw if isinstance(raw, (bytes, str)) else bytes(raw)
            return self._adapted(self._converter.from_json, text)
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise self._input_error(str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise self._input_error(f"the input is not valid JSON: {exc}") from exc

    def _adapted(self, convert: Callable[[Any], Any], value: Any) -> Any:
        try:
            return convert(value)
        except ValueError as exc:
            raise self._input_error(one_line(exc)) from exc
        except Exception as exc:
            # The same input would fail the same way on every attempt: it fails the task at once
            # like a mismatch, naming the exception so a broken adapter can be told apart.
            raise self._input_error(
                f"the type adapter failed: {type(exc).__name__}: {one_line(exc)}"
            ) from exc

    def _input_error(self, reason: str) -> InputValidationError:
        expected = "JSON" if self.input_type is None else f"`{type_name(self.input_type)}`"
        return InputValidationError(
            f"{describe(self._flow_slug, self._step_slug)}: the input does not match "
            f"{expected}: {reason}",
            flow_slug=self._flow_slug,
            step_slug=self._step_slug,
            reason=reason,
        )

    # -- calls ---------------------------------------------------------------------------------

    def call(self, value: Any, ctx: object) -> Any:
        result = self.function(value, ctx) if self.accepts_context else self.function(value)
        if inspect.iscoroutine(result):
            return self._run_coroutine(result)
        return result

    async def call_async(self, value: Any, ctx: object) -> Any:
        result = self.function(value, ctx) if self.accepts_context else self.function(value)
        # Also covers sync callables that hand back an awaitable (e.g. a lambda around a coroutine).
        if inspect.isawaitable(result):
            return await result
        return result

    def _run_coroutine(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        coroutine.close()
        raise ExecutorError(
            f"{describe(self._flow_slug, self._step_slug)} has an async handler and an event loop "
            "is already running in this thread; use `await step.invoke_async(...)` (or the "
            "asyncio executor)"
        )

    # -- output --------------------------------------------------------------------------------

    def to_builtins(self, output: Any) -> Any:
        if isinstance(output, _JSON_SCALARS):
            return output
        try:
            return msgspec.to_builtins(output, str_keys=True, enc_hook=encode_unknown)
        except TypeError as exc:
            raise HandlerOutputError(
                f"{describe(self._flow_slug, self._step_slug)}: the handler returned a value "
                f"that cannot be turned into JSON ({exc}); return dicts, lists, strings, "
                "numbers, booleans, None, msgspec Structs or dataclasses",
                flow_slug=self._flow_slug,
                step_slug=self._step_slug,
            ) from exc


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    # Instances of classes with an `async def __call__`.
    return not inspect.isroutine(function) and inspect.iscoroutinefunction(type(function).__call__)


def _analyse_signature(
    where: str, flow_slug: str, step_slug: str, function: Callable[..., Any]
) -> tuple[inspect.Parameter | None, bool]:
    """Return the input parameter (if named) and whether the handler also takes `ctx`."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise FlowDefinitionError(
            f"{where}: cannot read the handler's signature ({exc}); wrap it in a plain "
            "`def handler(input, ctx)` function",
            flow_slug=flow_slug,
            step_slug=step_slug,
        ) from exc
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    required_keyword_only = [
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    expected = "a handler takes (input) or (input, ctx)"
    if required_keyword_only:
        raise FlowDefinitionError(
            f"{where}: the handler has required keyword-only parameters "
            f"({', '.join(required_keyword_only)}), which pgflow cannot pass; {expected}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    if len(required) > 2:
        raise FlowDefinitionError(
            f"{where}: the handler requires {len(required)} positional parameters "
            f"({', '.join(required)}); {expected}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    if not positional and not takes_varargs:
        raise FlowDefinitionError(
            f"{where}: the handler takes no positional parameter, so it cannot receive its "
            f"input; {expected}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    accepts_context = len(positional) >= 2 or takes_varargs
    return (positional[0] if positional else None), accepts_context


def _input_type(
    where: str,
    flow_slug: str,
    step_slug: str,
    function: Callable[..., Any],
    parameter: inspect.Parameter,
) -> tuple[Any, InputConverter | None]:
    """The type the input is converted to (None when the input is passed as is), and the
    converter of the type adapter that builds it when msgspec cannot (None: msgspec does)."""
    annotation = _resolve_annotation(where, flow_slug, step_slug, function, parameter)
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return None, None
    try:
        info = msgspec.inspect.type_info(annotation)
    except TypeError as exc:
        problem = f"which msgspec cannot decode ({exc})"
    else:
        custom = _first_custom_type(info)
        if custom is None:
            return annotation, None  # msgspec's fast path, with no plugin involved
        problem = f"and msgspec cannot build `{type_name(custom)}` from JSON"
    # Only now are plugins asked (and loaded): flows whose inputs msgspec builds never need them.
    lookup = _type_lookup
    try:
        if lookup is None:
            raise LookupError("pgflow's plugins are not loaded (import pgflow first)")
        return annotation, lookup(annotation)
    except LookupError as exc:
        why = str(exc)
        cause: Exception = exc
    except Exception as exc:
        raise FlowDefinitionError(
            f"{where}: the input parameter {parameter.name!r} is annotated with "
            f"`{type_name(annotation)}`, {problem}, and the type adapter that took it failed: "
            f"{type(exc).__name__}: {one_line(exc)}; change the annotation, or leave the "
            "parameter unannotated (or `Any`) to receive plain JSON values",
            flow_slug=flow_slug,
            step_slug=step_slug,
        ) from exc
    raise FlowDefinitionError(
        f"{where}: the input parameter {parameter.name!r} is annotated with "
        f"`{type_name(annotation)}`, {problem}; use a msgspec.Struct, a dataclass, a TypedDict "
        "or builtin types, install a plugin that adds such types (pgflow-pydantic does for "
        "pydantic models), or leave the parameter unannotated (or `Any`) to receive plain JSON "
        f"values ({why})",
        flow_slug=flow_slug,
        step_slug=step_slug,
    ) from cause


def _resolve_annotation(
    where: str,
    flow_slug: str,
    step_slug: str,
    function: Callable[..., Any],
    parameter: inspect.Parameter,
) -> Any:
    annotation = parameter.annotation
    if not isinstance(annotation, str):
        return annotation
    # String annotations (`from __future__ import annotations`) are evaluated in the module of
    # the function. Partials keep them on the wrapped function, callable objects on `__call__`.
    inner: Any = function
    while isinstance(inner, functools.partial):
        inner = inner.func
    sources = [function, inner]
    if not inspect.isroutine(inner):
        sources.append(type(inner).__call__)
    for source in sources:
        try:
            hints = typing.get_type_hints(source, include_extras=True)
        except Exception:
            continue
        if parameter.name in hints:
            return hints[parameter.name]
    # get_type_hints fails as a whole when any annotation (say, of `ctx`) is unresolvable, so try
    # the input's annotation on its own before giving up.
    namespace: dict[str, Any] = {}
    for source in sources:
        found = getattr(inspect.unwrap(source), "__globals__", None)
        if found is not None:
            namespace = found
            break
    try:
        return eval(annotation, dict(namespace))
    except Exception as exc:
        raise FlowDefinitionError(
            f"{where}: cannot resolve the annotation {annotation!r} of the input parameter "
            f"{parameter.name!r} ({type(exc).__name__}: {exc}); define the type at module level "
            "and import it at runtime (not only under TYPE_CHECKING)",
            flow_slug=flow_slug,
            step_slug=step_slug,
        ) from exc


def _first_custom_type(info: msgspec.inspect.Type) -> Any:
    """The first type in a msgspec type tree that would need a dec_hook, if any."""
    seen: set[int] = set()
    pending: list[Any] = [info]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            return node.cls
        if isinstance(node, (tuple, list)):
            pending.extend(node)
        elif isinstance(node, (msgspec.inspect.Type, msgspec.inspect.Field)):
            pending.extend(getattr(node, name) for name in node.__struct_fields__)
    return None


_MODULE_PREFIX: Final = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def type_name(annotation: Any) -> str:
    """A short readable name: `Item`, `list[Item]`, `int | None`."""
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__qualname__
    return _MODULE_PREFIX.sub("", repr(annotation))
