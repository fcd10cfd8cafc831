"""The context a step handler receives as its optional second argument.

A handler written as `def handler(input, ctx)` gets a `Context`: which run, step, task and attempt
it is working on, the run's input (fetched lazily, once), a logger that tags every record with
those identifiers, and a way to notice that the worker is shutting down.

A `Context` holds only plain values and two callables, so the process executor can build one
inside its child processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from pgflow.errors import FlowInputUnavailable

__all__ = ["Context", "FlowInputUnavailable", "ShutdownSignal"]

_UNSET: Final = object()


class ShutdownSignal(Protocol):
    """What `Context.shutdown` offers: `threading.Event` and `multiprocessing.Event` fit."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


if TYPE_CHECKING:
    _AdapterBase = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable at runtime only from Python 3.11 on
    _AdapterBase = logging.LoggerAdapter


class _StepLoggerAdapter(_AdapterBase):
    # The default LoggerAdapter replaces the caller's `extra`; keep both, ours winning on clashes.
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        own = self.extra or {}
        given = kwargs.get("extra")
        kwargs["extra"] = {**given, **own} if given else own
        return msg, kwargs


class Context:
    """Everything a handler may want to know about the task it is running.

    Attributes:
        run_id: the run's id (a UUID in text form).
        flow_slug, step_slug: where in which flow the task belongs.
        task_index: 0 for single steps; the element index for map steps.
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        shutdown: set when the worker begins a graceful shutdown; a long handler may check it
            (`ctx.shutdown.is_set()`, or wait on it instead of sleeping) and return early.
    """

    __slots__ = (
        "_flow_input",
        "_load_flow_input",
        "_logger",
        "attempt",
        "flow_slug",
        "run_id",
        "shutdown",
        "step_slug",
        "task_index",
    )

    def __init__(
        self,
        *,
        run_id: str,
        flow_slug: str,
        step_slug: str,
        task_index: int,
        attempt: int,
        shutdown: ShutdownSignal,
        load_flow_input: Callable[[], Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.task_index = task_index
        self.attempt = attempt
        self.shutdown = shutdown
        self._load_flow_input = load_flow_input
        self._flow_input: Any = _UNSET
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def flow_input(self) -> Any:
        """The input the run was started with, fetched on first use and then kept."""
        if self._flow_input is _UNSET:
            if self._load_flow_input is None:
                raise FlowInputUnavailable(
                    f"the flow input of run {self.run_id} is not available here: the executor "
                    "running step "
                    f"{self.flow_slug}.{self.step_slug} was created without a flow input loader; "
                    "pass `load_flow_input` when creating the executor"
                )
            self._flow_input = self._load_flow_input()
        return self._flow_input

    @property
    def shutdown_requested(self) -> bool:
        """True once the worker has begun shutting down."""
        return self.shutdown.is_set()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger named `pgflow.step.<flow>.<step>` whose records carry `run_id`,
        `flow_slug`, `step_slug`, `task_index` and `attempt` as attributes (usable in formats
        such as `%(run_id)s`)."""
        if self._logger is None:
            base = logging.getLogger(f"pgflow.step.{self.flow_slug}.{self.step_slug}")
            self._logger = _StepLoggerAdapter(
                base,
                {
                    "run_id": self.run_id,
                    "flow_slug": self.flow_slug,
                    "step_slug": self.step_slug,
                    "task_index": self.task_index,
                    "attempt": self.attempt,
                },
            )
        return self._logger

    def __repr__(self) -> str:
        return (
            f"Context(run_id={self.run_id!r}, flow_slug={self.flow_slug!r}, "
            f"step_slug={self.step_slug!r}, task_index={self.task_index}, "
            f"attempt={self.attempt})"
        )
