"""pgflow's own event sinks, off unless asked for (see docs/events.md):

- `PGFLOW_EVENTS_LOG=1`: one log record per event on logger `pgflow.events` (level INFO), the
  event's fields in the record's `extra` (a field named like a LogRecord attribute gets the
  prefix `event_`), for structured log handlers.
- `PGFLOW_EVENTS_JSONL=<path>` (appended to) or `-` (standard output): one JSON object per line
  per event.

The plugin manager registers each one that is asked for as a plugin named after its variable,
so `pgflow plugins` lists it and `PGFLOW_DISABLE_PLUGINS` can keep it out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any, Final

from pgflow.db.connection import env_flag
from pgflow.errors import ConfigError
from pgflow.plugins.hookspecs import hookimpl

LOG_ENV: Final = "PGFLOW_EVENTS_LOG"
JSONL_ENV: Final = "PGFLOW_EVENTS_JSONL"

logger = logging.getLogger("pgflow.events")

# attributes of every LogRecord: `extra` may not set them
_RECORD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def event_summary(event: Mapping[str, Any]) -> str:
    """`step:completed run=<id> step=<slug>`: one line naming an event."""
    parts = [str(event.get("event_type", "?")), f"run={event.get('run_id')}"]
    if "step_slug" in event:
        parts.append(f"step={event['step_slug']}")
    if "task_index" in event:
        parts.append(f"task={event['task_index']}")
    return " ".join(parts)


class LogSink:
    """One INFO record per event on logger `pgflow.events`."""

    @hookimpl
    def pgflow_event(self, event: Mapping[str, Any]) -> None:
        extra = {
            f"event_{key}" if key in _RECORD_FIELDS else key: value for key, value in event.items()
        }
        logger.info("event %s", event_summary(event), extra=extra)


class JsonLinesSink:
    """One JSON object per line per event, to a file (appended to) or to standard output."""

    def __init__(self, target: str) -> None:
        self.target = target
        # opened now, so that a path that cannot be written stops the worker at its start
        self._out = sys.stdout if target == "-" else self._open()
        self._lock = threading.Lock()

    @hookimpl
    def pgflow_event(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def _open(self) -> IO[str]:
        try:
            return open(self.target, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{JSONL_ENV}={self.target!r}: cannot open it for appending ({exc.strerror}); "
                "name a writable file, or - for standard output"
            ) from exc


def configured_sinks() -> list[tuple[str, object]]:
    """The builtin sinks the environment asks for, as (plugin name, plugin)."""
    sinks: list[tuple[str, object]] = []
    if env_flag(LOG_ENV, "to log every event on logger pgflow.events"):
        sinks.append((LOG_ENV, LogSink()))
    target = os.environ.get(JSONL_ENV, "").strip()
    if target:
        sinks.append((JSONL_ENV, JsonLinesSink(target)))
    return sinks
