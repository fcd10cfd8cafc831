"""pgflow for Python: a Postgres-native DAG workflow engine.

Define flows with `Flow`, run them with `Worker`, and start and watch runs with `Client` /
`AsyncClient`. `migrate(dsn)` installs pgmq and the pgflow schema.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pgflow.client import (
    AsyncClient,
    Client,
    Run,
    RunCancelled,
    RunFailed,
    RunNotFound,
    StepState,
    TaskState,
    WaitTimeout,
)
from pgflow.context import Context
from pgflow.errors import PgflowError
from pgflow.flow import Flow, load_flow
from pgflow.flow_errors import FlowDefinitionError, InputValidationError
from pgflow.migrate import migrate
from pgflow.worker import Worker

__all__ = [
    "AsyncClient",
    "Client",
    "Context",
    "Flow",
    "FlowDefinitionError",
    "InputValidationError",
    "PgflowError",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunNotFound",
    "StepState",
    "TaskState",
    "WaitTimeout",
    "Worker",
    "__version__",
    "load_flow",
    "migrate",
]
