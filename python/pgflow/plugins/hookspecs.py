"""The hooks pgflow plugins implement (pluggy, project name "pgflow").

A plugin is a module or object with functions named after these specs and decorated with
`hookimpl`; it is found through the `pgflow` entry point group or `PGFLOW_PLUGINS` (see
docs/plugins.md):

    from pgflow.hooks import hookimpl

    @hookimpl
    def pgflow_register_executors(register):
        register("trio", TrioExecutor)

Registration hooks receive a `register` callback rather than returning values, so one plugin can
register several things and every registration is checked where it happens. Every other hook
is a notification (events, workers, tasks), or returns a value that pgflow merges
(`pgflow_run_headers`): called for every plugin even when one of them raises; the failure is
logged (and that plugin's value is None). All are called through pluggy's hook caller, in pluggy's order,
wrappers included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import pluggy

from pgflow.executors.base import ExecutorFactory
from pgflow.flow.handlers import InputConverter

if TYPE_CHECKING:
    from pgflow.flow.definition import Flow

__all__ = [
    "InputConverter",
    "RegisterExecutor",
    "RegisterSerializer",
    "RegisterTypeAdapter",
    "Serializer",
    "TypeAdapter",
    "hookimpl",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("pgflow")
hookimpl = pluggy.HookimplMarker("pgflow")


class Serializer(Protocol):
    """Turns handler outputs and run inputs into JSON text and back.

    Postgres stores them as `jsonb`, so `encode` must produce valid UTF-8 JSON; a serializer
    decides how values JSON has no type for (dates, decimals, custom classes) are represented.
    """

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes | str) -> Any: ...


class TypeAdapter(Protocol):
    """Teaches pgflow a family of types msgspec does not know (pydantic models, ...).

    Asked only about what msgspec cannot handle itself: a handler input annotation that msgspec
    cannot build (once, when the step is defined), and the class of a value msgspec cannot write
    (once per class). Each method returns None for what is not its own.
    """

    def input_converter(self, annotation: Any) -> InputConverter | None:
        """A converter that builds inputs of `annotation` (`list[Model]`, `Model | None`, ...),
        or None when the adapter does not handle it."""
        ...

    def output_encoder(self, cls: type) -> Callable[[Any], Any] | None:
        """A function turning a value of `cls` into JSON-shaped values (dicts, lists, strings,
        numbers, booleans, None, or anything else msgspec writes), or None."""
        ...


#: Hooks that receive a `register` callback; every other hook is a notification.
REGISTRATION_HOOKS: Final = frozenset(
    {"pgflow_register_executors", "pgflow_register_serializers", "pgflow_register_type_adapters"}
)

RegisterExecutor = Callable[[str, ExecutorFactory], None]
"""`register(name, factory)`: the factory is called with keyword arguments `concurrency`,
`resolve_step` and `load_flow_input` and returns an `Executor`; an `Executor` subclass is one."""

RegisterSerializer = Callable[[str, Serializer], None]
"""`register(name, serializer)`."""

RegisterTypeAdapter = Callable[[str, TypeAdapter], None]
"""`register(name, adapter)`."""


@hookspec
def pgflow_register_executors(register: RegisterExecutor) -> None:
    """Register executors by name: `register("trio", TrioExecutor)`.

    Names must be unique across plugins: registering a name twice is an error naming both
    plugins. Users select an executor by name (`Worker(flows, executor="trio")`).
    """


@hookspec
def pgflow_register_serializers(register: RegisterSerializer) -> None:
    """Register serializers by name: `register("orjson", OrjsonSerializer())`.

    The object needs `encode(value) -> bytes` and `decode(bytes | str) -> value`; names must be
    unique across plugins.
    """


@hookspec
def pgflow_register_type_adapters(register: RegisterTypeAdapter) -> None:
    """Register type adapters by name: `register("pydantic", PydanticTypes())`.

    They build handler inputs whose annotations msgspec cannot (`input_converter`) and write
    values of classes msgspec cannot (`output_encoder`); the first adapter, in pluggy's order,
    that does not return None wins. Names must be unique across plugins.
    """


@hookspec
def pgflow_event(event: Mapping[str, Any]) -> None:
    """Receive one run or step event, such as `{"event_type": "step:completed", "run_id": ...}`
    (fields as in the SQL contract's event table).

    Fire and forget: called in pgflow's event delivery thread, never on a worker's task path; a
    sink that needs time should queue the event and return. Exceptions are logged and do not
    stop delivery to other sinks. The mapping must not be modified.
    """


@hookspec
def pgflow_worker_started(workers: Mapping[str, str], flows: Sequence[Flow], dsn: str) -> None:
    """A worker process registered itself and is about to claim tasks of `flows`.

    Called once per worker process. `workers` maps each flow's slug to the worker id (a UUID in
    text form) the process registered for it: the database knows a worker per flow. `dsn` is
    the database the worker uses (password included: redact it before logging it), for a plugin
    that wants a connection of its own.
    """


@hookspec
def pgflow_worker_stopped(workers: Mapping[str, str]) -> None:
    """A worker process stopped claiming tasks and finished (or gave back) the ones it had;
    `workers` as in `pgflow_worker_started`. Called once per worker process."""


@hookspec
def pgflow_run_headers(flow_slug: str) -> Mapping[str, str] | None:
    """Headers to keep with a run of `flow_slug` that this process is starting
    (`Client.start`, `AsyncClient.start`), such as `{"traceparent": ...}`; None for none.

    Called in the starting process, in the caller's thread (or task), just before the run is
    created; what every implementation returns is merged and stored with the run in the same
    transaction (`pgflow.run_headers`), where workers can read it. Names and values are strings.
    """


# -- tasks, in the worker that runs them --------------------------------------------------------
#
# Called on the worker's loop thread, between claims: an implementation should return at once
# (queue what needs time). A worker calls none of them when no plugin implements them.


@hookspec
def pgflow_task_claimed(
    flow_slug: str, run_id: str, step_slug: str, task_index: int, attempt: int, worker_id: str
) -> None:
    """The worker claimed this attempt of a task (`attempt` is 1 for the first). It may wait
    in the worker for a free slot before it starts."""


@hookspec
def pgflow_task_started(
    flow_slug: str, run_id: str, step_slug: str, task_index: int, attempt: int, worker_id: str
) -> None:
    """The task's handler was handed to the executor."""


@hookspec
def pgflow_task_finished(
    flow_slug: str,
    run_id: str,
    step_slug: str,
    task_index: int,
    attempt: int,
    worker_id: str,
    duration_seconds: float,
) -> None:
    """The handler returned, `duration_seconds` after it started. Its output is reported next
    (events carry step outputs); one that has no JSON form still fails the task then."""


@hookspec
def pgflow_task_failed(
    flow_slug: str,
    run_id: str,
    step_slug: str,
    task_index: int,
    attempt: int,
    worker_id: str,
    duration_seconds: float,
    error: str,
    will_retry: bool,
) -> None:
    """The attempt failed: `error` is "Type: message" as stored in the database. `will_retry`
    is whether the task has attempts left and the failure allows them (`pgflow.Fail`, or an
    input that does not fit, fail it at once). `duration_seconds` is 0 when the handler never
    ran."""
