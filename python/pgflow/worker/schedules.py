"""What a worker does with schedules (docs/schedules.md): reconcile the schedules its flows
declare when it starts, and fire due ticks from its loop.

Firing is one transaction: `pgflow.claim_due_schedules` locks the due schedules of the worker's
flows (SKIP LOCKED, so workers looking at the same moment take different ones) and gives the
database's `now()`; the cron arithmetic (`pgflow.flow.schedule`) says which ticks are due at that
instant and which comes next; `pgflow.fire_schedule_ticks` starts one run per tick and records
the last tick, in the same transaction. A worker killed before the commit leaves nothing (the
next worker fires the tick); after it, the run and the recorded tick together. The run id is
derived from the schedule and the tick, so a tick can never start two runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from pgflow.codec import check_json, encode_value
from pgflow.errors import PgflowError, ScheduleError, UnencodableValue, one_line
from pgflow.flow import Flow
from pgflow.flow.schedule import due_ticks, next_tick
from pgflow.plugins.hookspecs import Serializer

logger = logging.getLogger("pgflow.worker.schedules")

#: The longest a worker goes without looking at its flows' schedules: a schedule added or
#: resumed at run time is seen within this many seconds.
LOOK_INTERVAL: Final = 10.0
#: How long a worker waits before looking again when a due schedule was taken by another worker.
BUSY_RETRY: Final = 0.05
#: At most this many schedules fired per transaction (the rest in the next, at once).
FIRE_BATCH: Final = 50

_CLAIM = (
    "select s.schedule_id, s.flow_slug, s.schedule_name, s.cron, s.timezone, s.catch_up, "
    "s.ticks_from, s.next_tick_at, s.last_tick_at, now() as now "
    "from pgflow.claim_due_schedules(%s, %s) s"
)
_FIRE = "select tick_at, run_id from pgflow.fire_schedule_ticks(%s, %s, %s)"
_NEXT_DUE = (
    "select extract(epoch from min(coalesce(s.next_tick_at, now())) - now())::float8 "
    "from pgflow.schedules s where s.flow_slug = any (%s) and s.paused_at is null "
    "and s.removed_from_code_at is null and s.schedule_id <> all (%s::uuid[])"
)
_SYNC = "select pgflow.sync_code_schedules(%s, %s)"


@dataclass
class Firing:
    """What a worker's firing of schedules did, for logs and tests."""

    fired: list[tuple[str, str, dt.datetime, str]] = field(default_factory=list)
    """(flow slug, schedule name, tick, run id) per run started."""
    wait: float = LOOK_INTERVAL
    """Seconds until the worker should look again."""


class ScheduleFirer:
    """Fires the due ticks of the schedules of some flows, on a connection the caller owns
    (autocommit). Schedules that cannot be evaluated (a cron expression written by hand in SQL
    that cronsim refuses) are logged once and left alone until the worker restarts."""

    def __init__(self, flow_slugs: Iterable[str]) -> None:
        self.flow_slugs = list(flow_slugs)
        self._broken: dict[UUID, str] = {}

    def fire(self, conn: psycopg.Connection[Any]) -> Firing:
        result = Firing()
        fired_any = False
        with conn.transaction():
            rows = conn.execute(_CLAIM, (self.flow_slugs, FIRE_BATCH)).fetchall()
            for row in rows:
                fired_any = self._fire_one(conn, row, result) or fired_any
            found = conn.execute(_NEXT_DUE, (self.flow_slugs, list(self._broken))).fetchone()
        seconds = found[0] if found is not None else None
        if seconds is None:
            result.wait = LOOK_INTERVAL
        elif len(rows) >= FIRE_BATCH:
            result.wait = 0.0  # more were due than one transaction takes
        else:
            # a due schedule that another worker holds is fired by it within moments
            result.wait = min(LOOK_INTERVAL, max(float(seconds), 0.0 if fired_any else BUSY_RETRY))
        return result

    def _fire_one(self, conn: psycopg.Connection[Any], row: tuple[Any, ...], out: Firing) -> bool:
        (
            schedule_id,
            flow_slug,
            name,
            cron,
            timezone,
            catch_up,
            ticks_from,
            next_at,
            last_at,
            now,
        ) = row
        if schedule_id in self._broken:
            return False
        after = max(ticks_from, last_at) if last_at is not None else ticks_from
        try:
            if next_at is None:
                first = next_tick(cron, timezone, after)
                ticks = (
                    []
                    if first is None or first > now
                    else due_ticks(cron, timezone, after, now, catch_up)
                )
            else:
                ticks = due_ticks(cron, timezone, after, now, catch_up)
            following = next_tick(cron, timezone, now)
        except (ScheduleError, ValueError) as exc:
            self._broken[schedule_id] = cron
            logger.error(
                "schedule %s of flow %s cannot be evaluated (%s); it fires nothing until it is "
                "fixed and the worker restarts",
                name,
                flow_slug,
                one_line(exc),
            )
            return False
        try:
            with conn.transaction():  # a savepoint: one schedule's failure leaves the others
                started = conn.execute(_FIRE, (schedule_id, ticks, following)).fetchall()
        except psycopg.Error as exc:
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                raise
            # The run could not start (an input the flow refuses, a run id taken): retrying
            # gives the same answer, so these ticks are passed over, and said so.
            logger.error(
                "schedule %s of flow %s could not start the run of tick(s) %s: %s; the tick(s) "
                "are skipped",
                name,
                flow_slug,
                ", ".join(t.isoformat() for t in ticks),
                one_line(exc, 300),
            )
            with conn.transaction():
                conn.execute(_FIRE, (schedule_id, [], following))
            return False
        for tick_at, run_id in started:
            out.fired.append((flow_slug, name, tick_at, str(run_id)))
            logger.info(
                "schedule %s of flow %s: tick %s started run %s",
                name,
                flow_slug,
                tick_at.isoformat(),
                run_id,
            )
        return bool(started)


def sync_schedules(
    conn: psycopg.Connection[Any], flow: Flow, serializer: Serializer | None
) -> dict[str, list[str]]:
    """Make the database's code-declared schedules of `flow` match `flow.schedules`; the names
    per outcome (created, updated, unchanged, disabled, conflicts)."""
    declared = [
        {
            "name": s.name,
            "cron": s.cron,
            "timezone": s.timezone,
            "input": _input_json(flow, s.name, s.input, serializer),
            "catch_up": s.catch_up,
        }
        for s in flow.schedules
    ]
    row = conn.execute(_SYNC, (flow.slug, Jsonb(declared))).fetchone()
    outcome: dict[str, list[str]] = row[0] if row is not None else {}
    return outcome


def _input_json(flow: Flow, name: str, value: Any, serializer: Serializer | None) -> Any:
    """A schedule's input as the JSON value the database keeps, encoded as the flow's runs
    are, and checked against the flow's typed root steps."""
    try:
        encoded = (
            encode_value(value)
            if serializer is None
            else check_json(serializer.encode(value), "what the flow's serializer wrote")
        )
    except UnencodableValue as exc:
        raise ScheduleError(
            f"schedule {name!r} of flow {flow.slug!r}: its input has no JSON form: {exc}"
        ) from None
    try:
        flow.check_run_input(encoded)
    except PgflowError as exc:
        raise ScheduleError(
            f"schedule {name!r} of flow {flow.slug!r}: its input does not fit the flow: {exc}"
        ) from None
    return json.loads(encoded)


def describe_sync(flow_slug: str, outcome: Mapping[str, Sequence[str]]) -> list[tuple[int, str]]:
    """Log lines (level, message) for what a reconciliation did."""
    lines: list[tuple[int, str]] = []
    for key in ("created", "updated", "disabled"):
        names = outcome.get(key) or []
        if names:
            lines.append((logging.INFO, f"flow {flow_slug}: schedule(s) {', '.join(names)} {key}"))
    conflicts = outcome.get("conflicts") or []
    if conflicts:
        lines.append(
            (
                logging.WARNING,
                f"flow {flow_slug}: schedule(s) {', '.join(conflicts)} declared in the code are "
                "left out: a schedule created at run time has that name (`pgflow schedules "
                "remove` it, or rename the one in the code)",
            )
        )
    return lines
