"""The reporting thread: sends task results to Postgres on its own connection.

Reporting apart from claiming lets Postgres work on a claim and a report at the same time, and
lets results that arrive during one report call ride along on the next (group commit). A lost
connection is reopened with backoff and the same batch is sent again: a result that was already
recorded is ignored the second time, so nothing is lost or applied twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from pgflow.db.connection import connect
from pgflow.errors import PgflowError, one_line
from pgflow.worker.reports import Outcome, ResultSink

logger = logging.getLogger("pgflow.worker")


class Reporter:
    def __init__(
        self,
        dsn: str,
        sink: ResultSink,
        on_flushed: Callable[[Sequence[Outcome]], None],
        *,
        max_batch: int = 1000,
        max_backoff: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.sink = sink
        self.on_flushed = on_flushed
        self.max_batch = max_batch
        self.max_backoff = max_backoff
        self._items: list[Outcome] = []
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._busy = False
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pgflow-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcomes: Sequence[Outcome]) -> None:
        with self._cond:
            self._items.extend(outcomes)
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items) + (1 if self._busy else 0)

    def close(self, timeout: float) -> bool:
        """Report everything queued, then stop. False when results were left unreported."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abandon = True
                self._cond.notify()
            return False
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait()
                    if not self._items and self._closing:
                        return
                    batch = self._items[: self.max_batch]
                    del self._items[: self.max_batch]
                    self._busy = True
                try:
                    if not self._send(batch):
                        return
                finally:
                    with self._cond:
                        self._busy = False
                self.on_flushed(batch)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _send(self, batch: Sequence[Outcome]) -> bool:
        delay = 0.1
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, autocommit=True, prepare_threshold=None)
                self.sink.report(self._conn, batch)
                return True
            except (psycopg.OperationalError, psycopg.InterfaceError, PgflowError) as exc:
                logger.warning(
                    "could not report %d result(s) (%s); retrying in %.1fs",
                    len(batch),
                    one_line(exc, 200),
                    delay,
                )
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                with self._cond:
                    if self._abandon:
                        return False
                    self._cond.wait(delay)
                delay = min(delay * 2, self.max_backoff)
            except psycopg.Error as exc:
                # a bug or a broken invariant in the SQL: report the results one by one so a
                # single bad item cannot hold back the others
                logger.error("reporting a batch failed: %s", one_line(exc, 300))
                if len(batch) == 1:
                    logger.error(
                        "dropping the result of %s/%s[%d]; the task will be retried "
                        "after its timeout",
                        batch[0].run_id,
                        batch[0].step_slug,
                        batch[0].task_index,
                    )
                    return True
                for item in batch:
                    self._send([item])
                return True
