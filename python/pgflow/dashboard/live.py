"""When a run page's live stream looks again: woken by the database's events, else on a timer.

When the database keeps events (`pgflow db events on`), every transaction that moves a run sends
a NOTIFY on `pgflow_events`; one LISTEN connection (the `Wakeup`) wakes every open stream, which
then reads its run's state (one cheap statement, primary keys only) and sends it if it changed.
Task starts send no event, and a notification can be lost while the listener reconnects, so a
stream also looks every `LISTENING_INTERVAL` seconds. Without events (or while the listener is
down, or behind a pooler without `PGFLOW_LISTEN_DSN`) streams poll every `POLL_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import psycopg
from psycopg import sql

from pgflow.db.connection import connection_defaults, listen_dsn
from pgflow.db.listener import EVENTS_CHANNEL

logger = logging.getLogger("pgflow.dashboard")

POLL_INTERVAL: Final = 1.0
LISTENING_INTERVAL: Final = 5.0
_MAX_BACKOFF: Final = 10.0


class Wakeup:
    """Wakes the streams waiting in `wait` on every NOTIFY of `pgflow_events`."""

    def __init__(self, dsn: str, events_on: bool) -> None:
        self._dsn = listen_dsn(dsn) if events_on else None
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    @property
    def interval(self) -> float:
        """How long a stream waits at most before it looks again."""
        return LISTENING_INTERVAL if self.listening else POLL_INTERVAL

    @property
    def mode(self) -> str:
        return "notify" if self.listening else "poll"

    def start(self) -> None:
        if self._dsn is not None:
            self._task = asyncio.get_running_loop().create_task(self._listen(self._dsn))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, timeout: float | None = None) -> None:
        """Return at the next wake-up, or after `timeout` (default: `interval`) seconds."""
        event = self._event
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), self.interval if timeout is None else timeout)

    def wake(self) -> None:
        # every waiter holds the event it started waiting on: set it, and hand out a new one
        self._event.set()
        self._event = asyncio.Event()

    async def _listen(self, dsn: str) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, **connection_defaults(dsn, {})
                )
            except psycopg.Error as exc:
                logger.warning("dashboard cannot listen for events (%s); polling", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            try:
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_CHANNEL)))
                    self.listening = True
                    backoff = 0.1
                    self.wake()  # what happened while not listening
                    while True:
                        async for _ in conn.notifies(timeout=LISTENING_INTERVAL):
                            self.wake()
                        await conn.execute("select 1")  # still there?
            except psycopg.Error as exc:
                logger.warning("dashboard lost its event listener (%s); polling", exc)
            finally:
                self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
