"""Notifications: a thread that LISTENs on a channel and hands each payload to a callback.

Workers use it for wake-ups on `pgflow_tasks` and, when event-sink plugins are installed, for
the run and step events the SQL sends on `pgflow_events`.


The SQL sends one notification per transaction and flow when tasks become visible (Postgres folds
identical notifications of a transaction), so a fan-out of 100,000 tasks wakes a worker once.
Polling stays as the fallback: when the listener's connection is down, `alive` is False and the
worker polls at its short interval until the listener has reconnected.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection

import psycopg
from psycopg import sql

from pgflow.db.connection import connect
from pgflow.errors import PgflowError

logger = logging.getLogger("pgflow.worker")

TASKS_CHANNEL = "pgflow_tasks"
EVENTS_CHANNEL = "pgflow_events"


class ChannelListener:
    """Calls `on_payload(payload)` for every notification on `channel`, and `on_payload(None)`
    whenever it (re)connects, since notifications sent meanwhile were lost."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_payload: Callable[[str | None], None],
        *,
        check_interval: float = 1.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.on_payload = on_payload
        self.check_interval = check_interval
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._alive = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pgflow-{channel}", daemon=True)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lost = False  # since the last connection; says so when it is back

    @property
    def alive(self) -> bool:
        """True while notifications are being received (the worker may poll less often)."""
        return self._alive.is_set()

    def start(self) -> None:
        self._thread.start()

    def wait_alive(self, timeout: float) -> bool:
        """Wait until the listener is connected and listening (False on timeout)."""
        return self._alive.wait(timeout)

    def request_stop(self) -> None:
        """Ask the thread to stop at its next wake-up (see `stop`)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.check_interval + 2)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.1
            except (psycopg.Error, PgflowError, OSError) as exc:
                self._alive.clear()
                if self._stop.is_set():
                    break
                self._lost = True
                logger.warning(
                    "listener lost its connection (%s); reconnecting", type(exc).__name__
                )
                self.on_payload(None)  # the worker polls meanwhile
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self._close()

    def _listen(self) -> None:
        conn = connect(self.dsn, autocommit=True)
        self._conn = conn
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self._alive.set()
        if self._lost:
            self._lost = False
            logger.info("listener reconnected")
        self.on_payload(None)
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=self.check_interval):
                self.on_payload(notify.payload)
                if self._stop.is_set():
                    return
            # no notification within the interval: make sure the connection still answers
            conn.execute("select 1")

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def task_listener(
    dsn: str, flow_slugs: Collection[str], wake: Callable[[], None]
) -> ChannelListener:
    """Wakes the worker when tasks of one of its flows become visible (and after reconnects)."""
    slugs = {slug.lower() for slug in flow_slugs}

    def on_payload(payload: str | None) -> None:
        if payload is None or payload.lower() in slugs:
            wake()

    return ChannelListener(dsn, TASKS_CHANNEL, on_payload)
