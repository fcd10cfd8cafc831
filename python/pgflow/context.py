"""The context a step handler receives as its optional second argument.

A handler written as `def handler(input, ctx)` gets a `Context`: which run, step, task and attempt
it is working on, the run's input and headers (each fetched lazily, once), the schedule tick that
started the run, a logger that tags every record with those identifiers, and a way to notice that
the worker is shutting down.

A `Context` holds only plain values and a few callables, so the process executor can build one
inside its child processes.

The names of the run headers a schedule's tick sets, and how the tick instant is read back from
its header, live here too: the client reads `Run.scheduled_at` with the same function.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, MutableMapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from pgflow.errors import FlowInputUnavailable, RunHeadersUnavailable

__all__ = [
    "SCHEDULED_AT_HEADER",
    "SCHEDULE_HEADER",
    "Context",
    "FlowInputUnavailable",
    "RunHeadersUnavailable",
    "ShutdownSignal",
    "parse_scheduled_at",
]

_UNSET: Final = object()

#: The run header naming the schedule whose tick started the run (set by
#: `pgflow.fire_schedule_ticks`).
SCHEDULE_HEADER: Final = "pgflow-schedule"
#: The run header holding that tick's instant, ISO 8601 in UTC: `2025-03-30T01:00:00.000000Z`.
SCHEDULED_AT_HEADER: Final = "pgflow-scheduled-at"

# What fire_schedule_ticks writes, with the seconds and their fraction optional. Anyone who may
# start a run may set the header, so anything else is read as no tick rather than an error.
_SCHEDULED_AT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?Z", re.ASCII
)


def parse_scheduled_at(text: str | None) -> datetime | None:
    """The instant in a `pgflow-scheduled-at` header, as an aware datetime in UTC; None when
    there is no header or it does not hold a valid instant in that form."""
    if text is None:
        return None
    match = _SCHEDULED_AT.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "").ljust(6, "0")),
            tzinfo=timezone.utc,
        )
    except ValueError:  # a month 13, a 30 February, an hour 24, ...
        return None


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

    `load_flow_input()` returns the run's input; `load_run_headers(run_id)` the run's headers
    (it takes the run id so that executors hand the worker's loader over as it is, with no
    closure made per task). Either may be None when the executor has none; reading what it
    would load then raises.
    """

    __slots__ = (
        "_flow_input",
        "_headers",
        "_load_flow_input",
        "_load_run_headers",
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
        load_run_headers: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.task_index = task_index
        self.attempt = attempt
        self.shutdown = shutdown
        self._load_flow_input = load_flow_input
        self._flow_input: Any = _UNSET
        self._load_run_headers = load_run_headers
        self._headers: Mapping[str, str] | None = None
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
    def headers(self) -> Mapping[str, str]:
        """The run's headers (`pgflow.run_headers`), a read-only mapping of strings; `{}` for a
        run started without any. Fetched on first use and then kept; the worker fetches a run's
        headers once, whichever of its tasks asks first."""
        if self._headers is None:
            if self._load_run_headers is None:
                raise RunHeadersUnavailable(
                    f"the headers of run {self.run_id} are not available here: the executor "
                    f"running step {self.flow_slug}.{self.step_slug} was created without a run "
                    "headers loader; pass `load_run_headers` when creating the executor, and "
                    "from it to make_context"
                )
            loaded = self._load_run_headers(self.run_id)
            # The worker's cache hands out read-only mappings already; a plain dict (from
            # another loader, or across a process pipe) is copied so the handler cannot
            # change what other tasks of the run see.
            if not isinstance(loaded, MappingProxyType):
                loaded = MappingProxyType(dict(loaded))
            self._headers = loaded
        return self._headers

    @property
    def schedule(self) -> str | None:
        """The name of the schedule whose tick started the run (header `pgflow-schedule`), None
        for a run started otherwise."""
        return self.headers.get(SCHEDULE_HEADER)

    @property
    def scheduled_at(self) -> datetime | None:
        """The instant of the tick that started the run, an aware datetime in UTC (header
        `pgflow-scheduled-at`); None for a run no tick started (or whose header does not hold
        an instant)."""
        return parse_scheduled_at(self.headers.get(SCHEDULED_AT_HEADER))

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
