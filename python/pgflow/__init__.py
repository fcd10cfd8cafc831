"""pgflow for Python: a Postgres-native DAG workflow engine.

Define flows with `Flow`, run them with `Worker`, and start and watch runs with `Client` /
`AsyncClient`. `migrate(dsn)` installs pgmq and the pgflow schema. Every exception derives from
`PgflowError` and is exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pgflow.client import (
    AsyncClient,
    Client,
    FlowDefinition,
    Run,
    ScheduleInfo,
    StepDefinition,
    StepState,
    TaskState,
)
from pgflow.context import Context
from pgflow.db.migrations import migrate
from pgflow.errors import (
    BenchError,
    ConfigError,
    CoreError,
    DatabaseUnavailable,
    ElementOutOfRange,
    EmbeddedUnavailable,
    ExecutorBusyError,
    ExecutorClosedError,
    ExecutorError,
    Fail,
    FlowDefinitionError,
    FlowInputUnavailable,
    FlowLoadError,
    FlowMismatch,
    GrantError,
    HandlerOutputError,
    InputValidationError,
    InvalidJson,
    MigrationError,
    MissingBlob,
    NotAnArray,
    PgflowError,
    PluginError,
    RunCancelled,
    RunConflict,
    RunFailed,
    RunNotFound,
    ScheduleError,
    ScheduleNotFound,
    SchemaNotMigrated,
    SchemaTooNew,
    UnencodableValue,
    UnknownStepError,
    WaitTimeout,
)
from pgflow.flow import Flow, Schedule, load_flow
from pgflow.worker import Worker, WorkerOptions

__all__ = [
    "AsyncClient",
    "BenchError",
    "Client",
    "ConfigError",
    "Context",
    "CoreError",
    "DatabaseUnavailable",
    "ElementOutOfRange",
    "EmbeddedUnavailable",
    "ExecutorBusyError",
    "ExecutorClosedError",
    "ExecutorError",
    "Fail",
    "Flow",
    "FlowDefinition",
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
    "Run",
    "RunCancelled",
    "RunConflict",
    "RunFailed",
    "RunNotFound",
    "Schedule",
    "ScheduleError",
    "ScheduleInfo",
    "ScheduleNotFound",
    "SchemaNotMigrated",
    "SchemaTooNew",
    "StepDefinition",
    "StepState",
    "TaskState",
    "UnencodableValue",
    "UnknownStepError",
    "WaitTimeout",
    "Worker",
    "WorkerOptions",
    "__version__",
    "load_flow",
    "migrate",
]
