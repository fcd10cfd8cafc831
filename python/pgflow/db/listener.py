"""Notifications: a thread that LISTENs on a channel and hands each payload to a callback.

Workers use it for wake-ups on `pgflow_tasks` and, when event-sink plugins are installed, for
the run and step events the SQL sends on `pgflow_events`.


The SQL sends one notification per transaction and flow when tasks become visible (Postgres folds
identical notifications of a transaction), so a fan-out of 100,000 tasks wakes a worker once.
Polling stays as the fallback: when the listener's connection is down, `alive` is False and the
worker polls at its short interval until the listener has reconnected. Behind a pooler in
transaction mode the listener connects to `PGFLOW_LISTEN_DSN`, and without one it never starts
(`connection.listen_dsn`): the worker then always polls at its short interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection

import psycopg
from psycopg import sql

from pgflow.db.connection import LISTEN_DSN_ENV, POOLED_ENV, connect, listen_dsn
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
        self.dsn = listen_dsn(dsn)
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

    @property
    def enabled(self) -> bool:
        """False in pooled mode without a listen DSN: nothing will ever be received."""
        return self.dsn is not None

    def start(self) -> None:
        if self.dsn is None:
            logger.info(
                "not listening on %s: %s is set and %s is not, so the worker polls",
                self.channel,
                POOLED_ENV,
                LISTEN_DSN_ENV,
            )
            return
        self._thread.start()

    def wait_alive(self, timeout: float) -> bool:
        """Wait until the listener is connected and listening (False on timeout)."""
        return self.enabled and self._alive.wait(timeout)

    def request_stop(self) -> None:
        """Ask the thread to stop at its next wake-up (see `stop`)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
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
        assert self.dsn is not None  # start() runs the thread only with a DSN
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
