"""Executors run step handlers for a worker: thread (default), process, asyncio and inline.

`base` defines the interface (`Executor`, `Job`, `JobResult`); plugins add executors through the
`pgflow_register_executors` hook, and `pgflow.plugins.create_executor(name, ...)` builds one by
name. See docs/plugins.md.
"""

from __future__ import annotations

from pgflow.executors.asyncio_exec import AsyncioExecutor
from pgflow.executors.base import (
    Executor,
    ExecutorBusyError,
    ExecutorClosedError,
    ExecutorError,
    ExecutorFactory,
    FlowInputLoader,
    Job,
    JobResult,
    OnDone,
    RunnableStep,
    StepResolver,
)
from pgflow.executors.inline import InlineExecutor
from pgflow.executors.process import ProcessExecutor
from pgflow.executors.thread import ThreadExecutor

DEFAULT_EXECUTOR = ThreadExecutor.name

__all__ = [
    "DEFAULT_EXECUTOR",
    "AsyncioExecutor",
    "Executor",
    "ExecutorBusyError",
    "ExecutorClosedError",
    "ExecutorError",
    "ExecutorFactory",
    "FlowInputLoader",
    "InlineExecutor",
    "Job",
    "JobResult",
    "OnDone",
    "ProcessExecutor",
    "RunnableStep",
    "StepResolver",
    "ThreadExecutor",
]
