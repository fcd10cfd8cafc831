"""Run and step events for event-sink plugins (hook `pgflow_event`).

The SQL sends every event as a NOTIFY on channel `pgflow_events` (unless the database setting
`pgflow.events` is 'off'), after the transaction that caused it commits, so delivery never holds
up a completion. A worker with event sinks installed relays what it hears to them from its own
thread; a slow sink delays only other events. Each listening process receives every event:
with several workers, a sink sees each event once per worker that has it installed (filter on
`run_id` plus `event_type` if that matters). Events whose payload exceeded NOTIFY's 8,000-byte
limit arrive without `input`/`output` and with `"truncated": true`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

from pgflow.db.listener import EVENTS_CHANNEL, ChannelListener
from pgflow.plugins.manager import fire_event

logger = logging.getLogger("pgflow.events")


def parse_event(payload: str) -> dict[str, Any] | None:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        logger.warning("ignoring a pgflow_events notification that is not JSON: %.80s", payload)
        return None
    if not isinstance(event, dict) or "event_type" not in event:
        logger.warning("ignoring a pgflow_events notification without event_type: %.80s", payload)
        return None
    return event


class EventRelay:
    """Listens on `pgflow_events` and hands each event to the installed sinks, in order."""

    def __init__(self, dsn: str, *, max_queued: int = 10_000) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queued)
        self._listener = ChannelListener(dsn, EVENTS_CHANNEL, self._on_payload)
        self._thread = threading.Thread(
            target=self._deliver, name="pgflow-event-sinks", daemon=True
        )
        self._dropped = 0

    def start(self) -> None:
        self._thread.start()
        self._listener.start()

    def request_stop(self) -> None:
        self._listener.request_stop()

    def stop(self) -> None:
        self._listener.stop()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _on_payload(self, payload: str | None) -> None:
        if not payload:
            return  # a reconnect, or the worker waking us to stop
        event = parse_event(payload)
        if event is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("event sinks are too slow: %d event(s) dropped", self._dropped)

    def _deliver(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            fire_event(event)
