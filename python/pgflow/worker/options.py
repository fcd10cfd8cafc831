"""A worker's settings, with the defaults that `Worker`, `pgflow worker` and `pgflow bench` share.

`CLI_FLAGS` names the command-line flag of each setting `pgflow worker` accepts, so the command's
parser and `WorkerOptions.cli_args()` (which the bench uses to start worker processes) cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from pgflow.db.workers import DEFAULT_HEARTBEAT_INTERVAL
from pgflow.errors import ConfigError

#: PostgreSQL cannot store a jsonb value larger than this (about 256 MiB).
MAX_JSONB_BYTES: Final = 256 * 1024 * 1024 - 1


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker claims, runs and reports tasks.

    Attributes:
        executor: which executor runs the handlers: thread, process, asyncio, inline, or a
            plugin's.
        concurrency: handlers running at once.
        batch_size: tasks claimed per round trip (None: `concurrency` or `prefetch`, whichever
            is larger).
        prefetch: the most claimed tasks the worker holds that wait for a free slot, so that
            claims stay batched however few slots the executor has. Fewer when handlers are
            slow: the worker holds only what its slots will start within about a second at the
            pace it measures (and before it has measured, no more than `concurrency`), so an
            idle worker is never kept from work another one hoards. 0 turns it off.
        per_task: claim and report with the contract's per-task functions only (slower).
        allow_data_loss: replace a flow whose shape changed, deleting its runs (owner only).
        poll_interval: seconds between polls when no NOTIFY arrives.
        heartbeat_interval: seconds between heartbeats (and deprecation checks). Whoever looks
            at workers presumes one dead after three default intervals without a heartbeat
            (`pgflow.db.workers`): a longer interval makes a live worker look dead.
        requeue_interval: seconds between sweeps for tasks of dead workers.
        shutdown_grace: seconds in-flight tasks get to finish on a graceful stop.
        max_backoff: the longest wait between reconnection attempts, in seconds.
        listen: wake on NOTIFY (else poll only).
        serializer: the serializer for flows that name none (default: msgspec's JSON); a
            flow's own choice (`Flow(..., serializer=...)`) always wins.
        max_output_bytes: the largest JSON output a task may store; a larger one fails the task
            (OutputTooLarge) instead of weighing on every dependent's input. At most 256 MiB,
            jsonb's own limit.
        schedules: reconcile the flows' schedules declared in code when the worker starts, and
            fire the due ticks of their schedules. False: this worker does neither (other
            workers serving the flows do; `pgflow worker --no-schedules`).
    """

    executor: str = "thread"
    concurrency: int = 10
    batch_size: int | None = None
    prefetch: int = 256
    per_task: bool = False
    allow_data_loss: bool = False
    poll_interval: float = 1.0
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    requeue_interval: float = 15.0
    shutdown_grace: float = 30.0
    max_backoff: float = 10.0
    listen: bool = True
    max_output_bytes: int = 16 * 1024 * 1024
    serializer: str | None = None
    schedules: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be 1 or more, got {self.concurrency}")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be 0 or more, got {self.prefetch}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be 1 or more, got {self.batch_size}")
        for name in ("poll_interval", "heartbeat_interval", "requeue_interval", "max_backoff"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be more than 0 seconds, got {value}")
        if not 1 <= self.max_output_bytes <= MAX_JSONB_BYTES:
            raise ConfigError(
                f"max_output_bytes must be between 1 and {MAX_JSONB_BYTES} (jsonb's limit), "
                f"got {self.max_output_bytes}"
            )
        if not self.shutdown_grace >= 0:
            raise ConfigError(
                f"shutdown_grace must be 0 seconds or more, got {self.shutdown_grace}"
            )

    @property
    def claim_size(self) -> int:
        """The most tasks one claim asks for."""
        return self.batch_size or max(self.concurrency, self.prefetch)

    def replace(self, **changes: Any) -> WorkerOptions:
        """A copy with `changes` applied; an unknown name raises `ConfigError` listing the
        known ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown worker option(s) {', '.join(unknown)}; known: {known}")
        return dataclasses.replace(self, **changes)

    def cli_args(self) -> list[str]:
        """The `pgflow worker` flags that give these options (those that differ from the
        defaults)."""
        defaults = WorkerOptions()
        args: list[str] = []
        for name, flag in CLI_FLAGS.items():
            value = getattr(self, name)
            if value == getattr(defaults, name):
                continue
            if isinstance(value, bool):
                args.append(flag)
            else:
                args += [flag, str(value)]
        return args


#: The `pgflow worker` flag of each option it accepts. Booleans are switches: a `--no-` flag turns
#: its option off, any other turns it on.
CLI_FLAGS: Final[dict[str, str]] = {
    "executor": "--executor",
    "concurrency": "--concurrency",
    "batch_size": "--batch-size",
    "prefetch": "--prefetch",
    "per_task": "--per-task",
    "allow_data_loss": "--allow-data-loss",
    "poll_interval": "--poll-interval",
    "heartbeat_interval": "--heartbeat-interval",
    "requeue_interval": "--requeue-interval",
    "shutdown_grace": "--shutdown-grace",
    "max_output_bytes": "--max-output-bytes",
    "serializer": "--serializer",
    "schedules": "--no-schedules",
}
