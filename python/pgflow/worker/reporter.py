"""The reporting thread: sends task results to Postgres on its own connection.

Reporting apart from claiming lets Postgres work on a claim and a report at the same time, and
lets results that arrive during one report call ride along on the next (group commit). A lost
connection is reopened with backoff and the same batch is sent again: a result that was already
recorded is ignored the second time, so nothing is lost or applied twice.

The loop may attach a claim offer (free slots) to the results it hands over: when every result of
a batch belongs to the offer's flow, the batch goes through `report_and_claim`, and the tasks it
made ready come back with the acknowledgement, so a hop of a chain costs one round trip. Every
offer is answered exactly once (with the rows claimed, or None when the batch was reported
without claiming), so the loop can release the slots it set aside.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from pgflow.db.connection import connect
from pgflow.errors import PgflowError, one_line
from pgflow.worker.reports import ClaimOffer, Outcome, ResultSink

logger = logging.getLogger("pgflow.worker")


class Reporter:
    def __init__(
        self,
        dsn: str,
        sink: ResultSink,
        on_flushed: Callable[
            [Sequence[Outcome], Sequence[ClaimOffer], list[tuple[Any, ...]] | None], None
        ],
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
        self._offers: list[ClaimOffer] = []
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._busy = False
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pgflow-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcomes: Sequence[Outcome], offer: ClaimOffer | None = None) -> None:
        with self._cond:
            self._items.extend(outcomes)
            if offer is not None:
                self._offers.append(offer)
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
                    offers, self._offers = self._offers, []
                    self._busy = True
                rows: list[tuple[Any, ...]] | None = None
                try:
                    sent, rows = self._send(batch, _joint_offer(batch, offers, self.sink))
                    if not sent:
                        return
                finally:
                    with self._cond:
                        self._busy = False
                self.on_flushed(batch, offers, rows)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _send(
        self, batch: Sequence[Outcome], offer: ClaimOffer | None
    ) -> tuple[bool, list[tuple[Any, ...]] | None]:
        """(False when abandoned, the rows claimed or None when the report did not claim)."""
        delay = 0.1
        retried = False
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, autocommit=True, prepare_threshold=None)
                claimed = None
                if offer is not None:
                    claimed = self.sink.report_and_claim(self._conn, batch, offer)
                else:
                    self.sink.report(self._conn, batch)
                if retried:
                    logger.info("reporter reconnected; reported %d result(s)", len(batch))
                return True, claimed
            except (psycopg.OperationalError, psycopg.InterfaceError, PgflowError) as exc:
                retried = True
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
                        return False, None
                    self._cond.wait(delay)
                delay = min(delay * 2, self.max_backoff)
            except psycopg.Error as exc:
                # a bug or a broken invariant in the SQL: report without claiming, then the
                # results one by one, so a single bad item cannot hold back the others
                logger.error("reporting a batch failed: %s", one_line(exc, 300))
                if offer is not None:
                    return self._send(batch, None)
                if len(batch) == 1:
                    logger.error(
                        "dropping the result of %s/%s[%d]; the task will be retried "
                        "after its timeout",
                        batch[0].run_id,
                        batch[0].step_slug,
                        batch[0].task_index,
                    )
                    return True, None
                for item in batch:
                    self._send([item], None)
                return True, None


def _joint_offer(
    batch: Sequence[Outcome], offers: Sequence[ClaimOffer], sink: ResultSink
) -> ClaimOffer | None:
    """The offers merged into one, when the whole batch belongs to their one flow."""
    if not offers or not batch or not sink.claims_on_report:
        return None
    flow = offers[0].flow_slug
    if any(o.flow_slug != flow for o in offers) or any(o.flow_slug != flow for o in batch):
        return None
    return ClaimOffer(
        flow,
        offers[0].worker_id,
        sum(o.qty for o in offers),
        covers_all=all(o.covers_all for o in offers),
    )
