"""Run, step and task events for event-sink plugins (hook `pgflow_event`); see docs/events.md.

When the database keeps events (setting `pgflow.events` on), the SQL writes each one to table
`pgflow.events` in the transaction that caused it and wakes the relay with an empty NOTIFY on
`pgflow_events`. Every worker with event sinks installed runs an `EventRelay`, but only one per
database relays at a time: the one holding the lease of `pgflow.event_relay`, renewed at every
turn (`pgflow.event_relay_turn`). It reads events in id order after the cursor stored in that
row and hands them to the sinks from its own thread; the cursor moves only past events the
sinks were given (or that were dropped), so a relay that takes over after a crash resumes where
the last one stopped: each event is delivered once in normal operation, at least once always.

A slow or failing sink never holds up the worker, nor the lease: events wait in a bounded queue
and, when it is full, are dropped, counted and logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any, Final

import psycopg

from pgflow.db.connection import connect
from pgflow.db.dsn import redact
from pgflow.db.listener import EVENTS_CHANNEL, ChannelListener
from pgflow.errors import PgflowError
from pgflow.plugins.manager import fire_event

logger = logging.getLogger("pgflow.events")

RELAY_NAME: Final = "default"
EVENTS_ON_COMMAND: Final = "pgflow db events on"

_TURN = (
    "select last_id, last_assigned, writers, events_on from pgflow.event_relay_turn(%s, %s, %s, %s)"
)
_READ = "select id, payload from pgflow.events where id > %s and id <= %s order by id limit %s"
_RELEASE = "select pgflow.release_event_relay(%s, %s, %s)"


class EventRelay:
    """Relays kept events to the installed sinks while this worker holds the relay's lease."""

    def __init__(
        self,
        dsn: str,
        *,
        max_queued: int = 10_000,
        lease_seconds: int = 5,
        poll_interval: float = 1.0,
        batch: int = 500,
        holder: str | None = None,
    ) -> None:
        self._dsn = dsn
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._batch = batch
        self._drain_seconds = 5.0
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queued)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listener = ChannelListener(dsn, EVENTS_CHANNEL, self._on_notify)
        self._relay_thread = threading.Thread(
            target=self._relay, name="pgflow-event-relay", daemon=True
        )
        self._sink_thread = threading.Thread(
            target=self._deliver, name="pgflow-event-sinks", daemon=True
        )
        # written by the relay thread only
        self.leading = False
        self._read = 0  # every event up to this id was queued or dropped
        self._pending: tuple[int, frozenset[str]] | None = None
        self._warned_off = False
        self.dropped = 0
        # written by the sink thread only
        self._delivered = 0  # the last event handed to the sinks

    @property
    def read_upto(self) -> int:
        """Every event up to this id was queued for the sinks or dropped (tests wait on it)."""
        return self._read

    def start(self) -> None:
        self._sink_thread.start()
        self._relay_thread.start()
        self._listener.start()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._listener.request_stop()

    def stop(self) -> None:
        """Stop relaying: give the sinks a few seconds for what is queued, record what they got
        and give the lease up, so another worker's relay takes over at once."""
        self.request_stop()
        self._listener.stop()
        self._relay_thread.join(timeout=self._drain_seconds + 5)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._sink_thread.join(timeout=1)
        if self.dropped:
            logger.warning("event sinks were too slow: %d event(s) dropped in all", self.dropped)

    def _on_notify(self, payload: str | None) -> None:
        self._wake.set()  # events wait in the table: any notification, or a reconnect, wakes us

    # -- the relay thread ------------------------------------------------------------------------

    def _relay(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = connect(self._dsn, autocommit=True)
                    more = self._turn(conn)
                    backoff = 0.1
                except (psycopg.Error, PgflowError, OSError) as exc:
                    logger.warning(
                        "event relay: %s: %s; retrying in %.1f s",
                        type(exc).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                        backoff,
                    )
                    _close(conn)
                    conn = None
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if not more:
                    self._wake.wait(self._poll_interval)
                    self._wake.clear()
            self._finish(conn)
        finally:
            _close(conn)

    def _position(self) -> int:
        """How far the sinks have got: everything read once the queue is empty."""
        if self._queue.unfinished_tasks == 0:
            return self._read
        return self._delivered

    def _turn(self, conn: psycopg.Connection[Any]) -> bool:
        """Renew the lease and queue what can be read; True when more may be waiting."""
        row = conn.execute(
            _TURN, (RELAY_NAME, self.holder, self._lease_seconds, self._position())
        ).fetchone()
        assert row is not None  # the function always returns one row
        last_id, last_assigned, writers, events_on = row
        if not events_on and not self._warned_off:
            self._warned_off = True
            logger.warning(
                "event sinks are installed but database %s does not keep events, so they will "
                "get none: run `%s` (then restart the workers)",
                conn.info.dbname,
                EVENTS_ON_COMMAND,
            )
        if last_id is None:
            if self.leading:
                logger.info("event relay: another worker relays events now")
                self.leading = False
            return False
        if not self.leading:
            logger.info("event relay: this worker relays events, after event id %d", last_id)
            self.leading = True
            self._read = last_id
            self._pending = None
        upto = self._safe_upto(int(last_assigned), frozenset(writers))
        if upto is None or upto <= self._read:
            return False
        found = conn.execute(_READ, (self._read, upto, self._batch)).fetchall()
        for event_id, payload in found:
            self._enqueue({**payload, "id": event_id})
            self._read = event_id
        if len(found) < self._batch:
            self._read = upto  # the ids in between were rolled back: none will appear
            return False
        return True

    def _safe_upto(self, last_assigned: int, writers: frozenset[str]) -> int | None:
        """The largest id that no running transaction can still commit an event below."""
        if not writers:
            self._pending = None
            return last_assigned
        upto = None
        if self._pending is not None and not (self._pending[1] & writers):
            upto = self._pending[0]  # every writer seen then has finished
            self._pending = None
        if self._pending is None:
            self._pending = (last_assigned, writers)
        return upto

    def _enqueue(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "event sinks are too slow: %d event(s) dropped so far (the queue holds %d); "
                    "a sink should queue events and return",
                    self.dropped,
                    self._queue.maxsize,
                )

    def _finish(self, conn: psycopg.Connection[Any] | None) -> None:
        """On stop: let the sinks finish what is queued (a while at most), then release."""
        if conn is None or not self.leading:
            return
        deadline = time.monotonic() + self._drain_seconds
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            conn.execute(_RELEASE, (RELAY_NAME, self.holder, self._position()))
        except psycopg.Error as exc:
            logger.warning(
                "event relay: could not give the lease up (%s); another worker takes over "
                "when it runs out, in %d s, at %s",
                type(exc).__name__,
                self._lease_seconds,
                redact(self._dsn),
            )
        self.leading = False

    # -- the sink thread -------------------------------------------------------------------------

    def _deliver(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                fire_event(event)  # a failing sink is logged and skipped there
                self._delivered = int(event["id"])
            finally:
                self._queue.task_done()


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
