"""Fleet-wide gauges (queued tasks and live workers per flow), exported by one worker only.

Every worker of a database could read these numbers, but then a sum over the workers' endpoints
would count them once per worker. So only the worker holding a session advisory lock on a
connection of its own exports them; the others export no value and try to take the lock every
`retry_interval` seconds, so one of them takes over when the holder's session ends (it stopped,
died, or lost its connection).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgflow.db.connection import connect, describe_error, listen_dsn, scalar
from pgflow.db.workers import serving_count
from pgflow.errors import PgflowError

logger = logging.getLogger("pgflow.prometheus")

# a key pair of its own, apart from pgflow's advisory locks (class ids 1885434471/2)
LOCK = "select pg_try_advisory_lock(hashtext('pgflow-prometheus'), 1)"

# queued tasks rather than pgmq's visible messages: a pgflow_worker role may read pgflow's
# tables but not pgmq's
GAUGES = f"""
select f.flow_slug,
       (select count(*)::int from pgflow.step_tasks t
         where t.flow_slug = f.flow_slug and t.status = 'queued'),
       {serving_count("f.flow_slug")}
  from pgflow.flows f
 order by f.flow_slug
"""


class FleetGauges(Collector):
    def __init__(self, dsn: str, retry_interval: float = 5.0) -> None:
        # a session lock needs a session: the direct connection LISTEN uses, never a pooler in
        # transaction mode (None then: this worker never exports the fleet gauges)
        self._dsn = listen_dsn(dsn)
        self._retry_interval = retry_interval
        self._conn: psycopg.Connection[Any] | None = None
        self._leader = False
        self._lock = threading.Lock()  # the connection is shared with the scraping thread
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._elect, name="pgflow-prometheus-election", daemon=True
        )

    @property
    def leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        if self._dsn is None:
            logger.warning(
                "fleet gauges (pgflow_queue_depth, pgflow_live_workers) are off in pooled mode: "
                "set PGFLOW_LISTEN_DSN to a direct connection to have one worker export them"
            )
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            self._drop_connection()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # registering must not query the database
        return ()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            if not self._leader or self._conn is None:
                return []
            try:
                rows = self._conn.execute(GAUGES).fetchall()
            except psycopg.Error as exc:
                self._lose(exc)
                return []
        depth = GaugeMetricFamily(
            "pgflow_queue_depth",
            "Queued tasks per flow (waiting for a worker or for a retry delay), fleet-wide.",
            labels=["flow"],
        )
        live = GaugeMetricFamily(
            "pgflow_live_workers",
            "Live workers serving each flow, fleet-wide.",
            labels=["flow"],
        )
        for flow_slug, queued, serving in rows:
            depth.add_metric([flow_slug], queued)
            live.add_metric([flow_slug], serving)
        return [depth, live]

    def _elect(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._try_to_lead()
            self._stop.wait(self._retry_interval)

    def _try_to_lead(self) -> None:
        assert self._dsn is not None
        try:
            if self._conn is None or self._conn.closed:
                self._leader = False
                self._conn = connect(
                    self._dsn, autocommit=True, application_name="pgflow-prometheus"
                )
            if self._leader:
                # the holder checks its session is still there, else another worker exports
                # while this one still thinks it does
                self._conn.execute("select 1")
            elif scalar(self._conn, LOCK):
                self._leader = True
                logger.info("this worker exports the fleet gauges")
        except (psycopg.Error, PgflowError) as exc:
            self._lose(exc)

    def _lose(self, exc: BaseException) -> None:
        if self._leader:
            logger.warning(
                "this worker stops exporting the fleet gauges: %s", describe_error(exc, self._dsn)
            )
        else:
            logger.debug("fleet gauges election: %s", describe_error(exc, self._dsn))
        self._drop_connection()

    def _drop_connection(self) -> None:
        self._leader = False
        if self._conn is not None:
            self._conn.close()  # ends the session, so the lock goes with it
            self._conn = None
