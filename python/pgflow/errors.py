"""Every exception pgflow raises on purpose, in one hierarchy rooted at `PgflowError`.

Callers (and the `pgflow` command, which turns them into one `error: ...` line) can catch them
in one place. Messages are written for the person who has to act on them: what went wrong and
what to do. They never contain a database password. All of them are exported from `pgflow`.

    PgflowError
    ├── ConfigError                  a DSN, environment variable or option is invalid
    ├── DatabaseUnavailable          PostgreSQL cannot be reached
    ├── EmbeddedUnavailable          the embedded server is missing or does not start
    ├── MigrationError               the schema cannot be brought up to date
    │   ├── SchemaTooNew             ... because a newer pgflow migrated it
    │   └── SchemaNotMigrated        the schema is missing or older than this pgflow
    ├── GrantError                   a pgflow role cannot be granted to a login
    ├── FlowDefinitionError          a flow is defined wrongly (at definition time)
    ├── UnknownStepError             a step slug the flow does not define (also LookupError)
    ├── FlowLoadError                a "module:attr" flow reference does not resolve
    ├── FlowMismatch                 the flow in the database differs from the code
    ├── InputValidationError         a task input does not fit the handler's type
    ├── HandlerOutputError           a handler's output has no JSON form
    ├── FlowInputUnavailable         ctx.flow_input cannot be fetched
    ├── Fail                         raised by a handler: fail the task now, no retry
    ├── ExecutorError                an executor misused or closed (also RuntimeError)
    │   ├── ExecutorBusyError
    │   └── ExecutorClosedError
    ├── PluginError                  a plugin failed to load or broke a hook's rules
    ├── RunNotFound                  no run has this id, or it is no run id (also LookupError)
    ├── RunConflict                  a run id given to start is taken by another flow or input
    ├── RunFailed                    a waited-for run failed
    │   └── RunCancelled
    ├── WaitTimeout                  a run did not finish in time (also TimeoutError)
    ├── ScheduleError                a schedule is declared or managed wrongly
    │   └── ScheduleNotFound         no such schedule (also LookupError)
    ├── BenchError                   a benchmark could not run or verify
    └── CoreError                    the hot-path core (Rust or its fallback); also ValueError
        ├── InvalidJson, NotAnArray, ElementOutOfRange, MissingBlob
        └── UnencodableValue

The core's classes are raised by the Rust extension itself: `pgflow._core` imports this module
and raises these very classes, so `except InvalidJson:` behaves the same whichever implementation
is in use.
"""

from __future__ import annotations

from typing import Any


def one_line(text: object, limit: int | None = None) -> str:
    """`text` as one line: its lines joined with "; ", white space folded, cut at `limit`.

    Error messages are shown and logged as one line; libpq's span several (a reason, then a
    hint).
    """
    parts = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    joined = "; ".join(parts)
    if limit is not None and len(joined) > limit:
        return joined[: max(limit - 3, 0)] + "..."
    return joined


class PgflowError(Exception):
    """Base class of every error pgflow raises on purpose."""


# -- configuration and database -------------------------------------------------------------------


class ConfigError(PgflowError):
    """The configuration (a DSN, an environment variable, an option) is invalid."""


class DatabaseUnavailable(PgflowError):
    """PostgreSQL could not be reached or refused the connection."""


class EmbeddedUnavailable(PgflowError):
    """The embedded PostgreSQL server is not installed or could not be started."""


class MigrationError(PgflowError):
    """The database schema could not be brought up to date, or does not match what we ship."""


class SchemaTooNew(MigrationError):
    """The database was migrated by a newer pgflow than this one."""

    def __init__(self, message: str, *, database_version: int, package_version: int) -> None:
        super().__init__(message)
        self.database_version = database_version
        self.package_version = package_version


class SchemaNotMigrated(MigrationError):
    """The database has no pgflow schema (`database_version` 0), or an older one than this
    pgflow ships: `pgflow db migrate` brings it up to date."""

    def __init__(self, message: str, *, database_version: int, package_version: int) -> None:
        super().__init__(message)
        self.database_version = database_version
        self.package_version = package_version


class GrantError(PgflowError):
    """`pgflow db grant` cannot grant a pgflow role: the login or the role does not exist, the
    database is not migrated, or the connected role may not grant."""


# -- flows ------------------------------------------------------------------------------------------


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


class FlowMismatch(PgflowError):
    """The flow in the database differs from the flow in code.

    `differences` lists them, as `pgflow.ensure_flow_compiled` reports them.
    """

    def __init__(self, message: str, *, flow_slug: str, differences: list[str]):
        super().__init__(message)
        self.flow_slug = flow_slug
        self.differences = differences


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


class FlowInputUnavailable(PgflowError):
    """`Context.flow_input` was read but the worker gave the executor no way to fetch it."""


class RunHeadersUnavailable(PgflowError):
    """`Context.headers` (or `schedule`, `scheduled_at`) was read but the executor running the
    handler was given no way to fetch the run's headers (an executor plugin that does not take
    `load_run_headers`)."""


class Fail(PgflowError):
    """Raise it in a handler to fail the task at once: the attempts left are not made (a retry
    would fail the same way: bad data, a permanent refusal) and the step's `when_exhausted`
    applies, as when the last attempt fails. The task's error reads `Fail: <message>` (or the
    subclass's name). Any other exception is retried with backoff while attempts are left."""


# -- executors and plugins --------------------------------------------------------------------------


class ExecutorError(PgflowError, RuntimeError):
    """An executor was used wrongly, or cannot run a job (for example an async handler called
    synchronously inside a running event loop)."""


class ExecutorBusyError(ExecutorError):
    """`submit()` was called while `free_slots()` was 0."""


class ExecutorClosedError(ExecutorError):
    """`submit()` was called before `start()` or after `shutdown()`/`kill()`."""


class PluginError(PgflowError):
    """A plugin failed to load, broke a hook's rules, or something asked for is not provided."""


# -- runs -------------------------------------------------------------------------------------------


class RunNotFound(PgflowError, LookupError):
    """No run has this id, the id is malformed, or a prefix of ids matches none or several."""


class RunConflict(PgflowError):
    """A run id given to start a run is already the id of a run of another flow or input."""


class RunFailed(PgflowError):
    """The run failed; `error` says why and `run` (a `pgflow.Run`) holds its final state."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id: str = run.run_id
        self.error: str = run.error_message or run.failure_reason() or "unknown error"
        super().__init__(f"run {run.run_id} of flow {run.flow_slug!r} {run.status}: {self.error}")


class RunCancelled(RunFailed):
    """The run was cancelled."""


class WaitTimeout(PgflowError, TimeoutError):
    """The run did not finish within the time given to `wait`."""


# -- schedules ---------------------------------------------------------------------------------


class ScheduleError(PgflowError):
    """A schedule is declared or managed wrongly: a cron expression or time zone that does not
    parse, a name taken, a schedule the code declares removed at run time."""


class ScheduleNotFound(ScheduleError, LookupError):
    """The flow has no schedule of this name."""


class DashboardBadRequest(PgflowError):
    """A request the dashboard cannot answer as asked (HTTP 400), saying what to send instead."""


class DashboardNotFound(PgflowError, LookupError):
    """What a dashboard request asked for does not exist (HTTP 404)."""


class BenchError(PgflowError):
    """A benchmark could not run, or a run produced a wrong output."""


# -- the hot-path core ------------------------------------------------------------------------------
#
# Every core error carries `position`: the index, in the sequence the caller passed, of the task,
# item or output that failed (None when the error is not about one item). A worker uses it to fail
# that one task and go on with the rest of the batch.


class CoreError(PgflowError, ValueError):
    """Base class; raised as such for bad task specs (for example an unknown mode)."""

    position: int | None

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class InvalidJson(CoreError):
    """A blob or an item to decode is not valid JSON, or nests deeper than ``MAX_DEPTH``."""


class NotAnArray(CoreError):
    """A map task's parent blob is valid JSON but not an array."""


class ElementOutOfRange(CoreError):
    """A map task's ``task_index`` is negative or past the end of its parent array."""


class MissingBlob(CoreError):
    """The run input (flow-input or root map task) or map parent blob is absent."""


class UnencodableValue(CoreError):
    """A handler result cannot be stored as PostgreSQL jsonb.

    ``path`` locates the offending part inside the value (``$.items[3].when``) and
    ``type_name`` is its Python type's name.
    """

    path: str
    type_name: str

    def __init__(
        self,
        message: str,
        *,
        path: str = "$",
        type_name: str = "",
        position: int | None = None,
    ) -> None:
        super().__init__(message, position=position)
        self.path = path
        self.type_name = type_name


__all__ = [
    "BenchError",
    "ConfigError",
    "CoreError",
    "DashboardBadRequest",
    "DashboardNotFound",
    "DatabaseUnavailable",
    "ElementOutOfRange",
    "EmbeddedUnavailable",
    "ExecutorBusyError",
    "ExecutorClosedError",
    "ExecutorError",
    "Fail",
    "FlowDefinitionError",
    "FlowInputUnavailable",
    "FlowLoadError",
    "FlowMismatch",
    "GrantError",
    "HandlerOutputError",
    "InputValidationError",
    "InvalidJson",
    "MigrationError",
    "MissingBlob",
    "NotAnArray",
    "PgflowError",
    "PluginError",
    "RunCancelled",
    "RunConflict",
    "RunFailed",
    "RunHeadersUnavailable",
    "RunNotFound",
    "ScheduleError",
    "ScheduleNotFound",
    "SchemaNotMigrated",
    "SchemaTooNew",
    "UnencodableValue",
    "UnknownStepError",
    "WaitTimeout",
]
