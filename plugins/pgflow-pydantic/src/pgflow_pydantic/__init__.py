"""pgflow-pydantic: pydantic models as handler inputs and outputs.

Registers, through the entry point `pydantic` in group `pgflow`:

- the type adapter `pydantic`: a handler whose input is annotated with a type msgspec cannot
  build (a `BaseModel`, `list[Model]`, `Model | None`, ...) gets it validated by a
  `pydantic.TypeAdapter` built once, when the step is defined; input that does not fit fails
  the task at once (`InputValidationError`, no retries) and `Client.start` refuses such a run
  input before creating the run. Handlers may return models (alone, in lists, in dicts) with
  any serializer: the default one asks this adapter how to write them;
- the serializer `pydantic` (`Flow(..., serializer="pydantic")`): run inputs and outputs
  written by `pydantic_core.to_json`, read back as plain JSON values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec
import pydantic
import pydantic_core

from pgflow.hooks import RegisterSerializer, RegisterTypeAdapter, hookimpl

__all__ = [
    "NAME",
    "PydanticConverter",
    "PydanticInputError",
    "PydanticSerializer",
    "PydanticTypes",
    "describe_errors",
]

#: The name of both the type adapter and the serializer.
NAME: Final = "pydantic"

# how many of a validation error's problems a task's error message lists
_SHOWN_ERRORS: Final = 5


class PydanticInputError(ValueError):
    """An input that does not fit the handler's annotation (pgflow fails the task with it); the
    `ValidationError` is its `__cause__`."""


def describe_errors(error: pydantic.ValidationError) -> str:
    """The problems of a validation error on one line, each with the JSON path it is at:
    "Field required - at `$.items[1].sku`; Input should be ... - at `$.qty`"."""
    problems = error.errors(include_url=False)
    parts = [f"{problem['msg']} - at `{_path(problem['loc'])}`" for problem in problems]
    if len(parts) > _SHOWN_ERRORS:
        parts = [*parts[:_SHOWN_ERRORS], f"and {len(parts) - _SHOWN_ERRORS} more"]
    return "; ".join(parts)


def _path(location: tuple[int | str, ...]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)


class PydanticConverter:
    """Builds one handler's input with the `TypeAdapter` made for its annotation."""

    __slots__ = ("adapter",)

    def __init__(self, adapter: pydantic.TypeAdapter[Any]) -> None:
        self.adapter = adapter

    def from_json(self, raw: bytes | str) -> Any:
        try:
            return self.adapter.validate_json(raw)
        except pydantic.ValidationError as exc:
            raise PydanticInputError(describe_errors(exc)) from exc

    def from_value(self, value: Any) -> Any:
        # a model instance (a worker's job already built it) comes back as it is
        try:
            return self.adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise PydanticInputError(describe_errors(exc)) from exc


def _schema_of(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    """A `TypeAdapter` for the annotation, or None when pydantic has no schema for it (a class
    neither pydantic nor msgspec knows: not ours to take)."""
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
    except pydantic.PydanticSchemaGenerationError:
        return None
    # A model that refers to types not defined yet would only fail on its first input: make it
    # fail now, when the step is defined, naming what is missing.
    adapter.rebuild(raise_errors=True)
    return adapter


class PydanticTypes:
    """The type adapter: pgflow asks it only about what msgspec cannot handle itself, so
    whatever pydantic can validate or write is taken."""

    def input_converter(self, annotation: Any) -> PydanticConverter | None:
        adapter = _schema_of(annotation)
        return None if adapter is None else PydanticConverter(adapter)

    def output_encoder(self, cls: type) -> Callable[[Any], Any] | None:
        adapter = _schema_of(cls)
        if adapter is None:
            return None

        def encode(value: Any) -> Any:
            return adapter.dump_python(value, mode="json")

        return encode


def _builtins(value: Any) -> Any:
    # what pydantic does not know but msgspec writes (Structs, ...), as pgflow's default would
    return msgspec.to_builtins(value, str_keys=True)


class PydanticSerializer:
    """JSON written by pydantic (models, dataclasses, datetimes, dates, UUIDs, Decimals, enums,
    and msgspec Structs through msgspec), read back as plain JSON values: building models from
    them is the typed handler input's job."""

    def encode(self, value: Any) -> bytes:
        # JSON has no NaN or infinity: they become null, as with pgflow's default serializer
        return pydantic_core.to_json(value, inf_nan_mode="null", fallback=_builtins)

    def decode(self, data: bytes | str) -> Any:
        return pydantic_core.from_json(data)


@hookimpl
def pgflow_register_type_adapters(register: RegisterTypeAdapter) -> None:
    register(NAME, PydanticTypes())


@hookimpl
def pgflow_register_serializers(register: RegisterSerializer) -> None:
    register(NAME, PydanticSerializer())
