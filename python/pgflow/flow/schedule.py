"""Schedules: start runs of a flow on a cron schedule (see docs/schedules.md).

    flow = Flow("report", schedules=[Schedule("nightly", "0 3 * * *", input={"full": True},
                                              timezone="Europe/Paris")])

A `Schedule` is only a declaration, checked when it is made; the workers that serve the flow
keep it in the database (`pgflow.schedules`) and fire its ticks. This module also holds the cron
arithmetic the workers use: cron expressions are evaluated by cronsim in the schedule's time zone
(zoneinfo), and every instant that leaves this module is timezone-aware UTC.

Daylight-saving time, as cronsim does it (Debian cron's rules) and as we keep it:

- A 5-field expression at fixed minutes and hours (`30 2 * * *`) runs at wall-clock times. In a
  gap (the clock jumps from 02:00 to 03:00), a time that does not exist runs once, at the first
  time after the gap (03:00). In an overlap (02:00 to 03:00 happens twice), it runs once, at
  its first occurrence.
- An expression whose minute or hour field starts with `*` (`*/15 * * * *`, `0 * * * *`), and
  any 6-field one, follows elapsed time: times that do not exist are skipped, and those that
  happen twice run twice (they are different instants).

Whatever cronsim yields, a tick is fired at most once: ticks are instants, strictly increasing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from pgflow.errors import ScheduleError
from pgflow.flow.validation import SLUG_PATTERN

__all__ = ["MAX_CATCH_UP", "Schedule", "check_cron", "due_ticks", "next_tick", "time_zone"]

UTC: Final = dt.timezone.utc
#: The most missed ticks one schedule may catch up after downtime.
MAX_CATCH_UP: Final = 1000
_SECOND: Final = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class Schedule:
    """A named cron schedule of a flow: each tick starts one run with `input`.

    `cron` has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), as
    cronsim reads them (`L`, `LW`, `#`, names of days and months included); it is evaluated in
    `timezone` (an IANA name). `catch_up` says what happens to ticks missed while no worker
    served the flow: 0 (the default) skips them, N fires at most the N latest of them; the
    latest due tick always fires. `input` is the run input (JSON-like, or anything the flow's
    serializer encodes).
    """

    name: str
    cron: str
    input: Any = None
    timezone: str = "UTC"
    catch_up: int = 0
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or not SLUG_PATTERN.fullmatch(self.name)
            or len(self.name) > 128
            or self.name == "run"
        ):
            raise ScheduleError(
                f"schedule name {self.name!r} is not valid: use 1 to 128 letters, digits and "
                "underscores, not starting with a digit (and not the word 'run')"
            )
        object.__setattr__(self, "cron", check_cron(self.cron, self.name))
        object.__setattr__(self, "_zone", time_zone(self.timezone, self.name))
        if (
            isinstance(self.catch_up, bool)
            or not isinstance(self.catch_up, int)
            or not 0 <= self.catch_up <= MAX_CATCH_UP
        ):
            raise ScheduleError(
                f"schedule {self.name!r}: catch_up must be a whole number from 0 (skip missed "
                f"ticks) to {MAX_CATCH_UP}, got {self.catch_up!r}"
            )

    def next_tick(self, after: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `after` (aware), in UTC; None if there is none."""
        return next_tick(self.cron, self.timezone, after)


def time_zone(name: str, schedule: str | None = None) -> ZoneInfo:
    """The zone named `name`; `ScheduleError` when there is none."""
    where = f"schedule {schedule!r}: " if schedule else ""
    try:
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"{where}time zone {name!r} is not known: give an IANA name such as 'UTC' or "
            "'Europe/Paris'"
        ) from None


def check_cron(cron: str, schedule: str | None = None) -> str:
    """`cron` with its whitespace normalised, after checking that cronsim reads it;
    `ScheduleError` saying why it does not."""
    where = f"schedule {schedule!r}: " if schedule else ""
    if not isinstance(cron, str) or not 5 <= len(cron.split()) <= 6 or len(cron) > 256:
        raise ScheduleError(
            f"{where}cron expression {cron!r} must have 5 fields (minute hour day month weekday) "
            "or 6 (with seconds first), such as '0 3 * * *'"
        )
    normal = " ".join(cron.split())
    try:
        CronSim(normal, dt.datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(f"{where}cron expression {cron!r} does not parse: {exc}") from None
    return normal


def next_tick(cron: str, timezone: str, after: dt.datetime) -> dt.datetime | None:
    """The first tick of `cron` in `timezone` strictly after the instant `after`, in UTC; None
    when cronsim finds none within 50 years."""
    _check_aware(after)
    ticks = CronSim(cron, after.astimezone(time_zone(timezone)))
    # cronsim's wall-clock rules may give an instant at or before `after` around an overlap
    # (it starts from the local time); ticks are instants and only go forward
    for _ in range(8):
        try:
            tick = next(ticks).astimezone(UTC)
        except StopIteration:
            return None
        if tick > after:
            return tick
    return None


def due_ticks(
    cron: str, timezone: str, after: dt.datetime, now: dt.datetime, catch_up: int
) -> list[dt.datetime]:
    """The ticks to fire at `now`, ascending, in UTC: of the ticks in (`after`, `now`], the
    latest, and before it at most `catch_up` of the latest others (missed ones: a later tick
    came due before any worker fired them). Empty when none is due.

    Found walking back from `now`, so a long outage costs no more than the ticks returned.
    """
    _check_aware(after)
    _check_aware(now)
    if now <= after:
        return []
    zone = time_zone(timezone)
    # cronsim walks back from whole seconds, excluding its start: start one second past `now`
    start = now.astimezone(UTC).replace(microsecond=0) + _SECOND
    found: set[dt.datetime] = set()
    walker = CronSim(cron, start.astimezone(zone), reverse=True)
    # a few extra steps: the wall-clock rules may repeat or overshoot an instant near DST
    for _ in range(catch_up * 2 + 8):
        try:
            tick = next(walker).astimezone(UTC)
        except StopIteration:
            break
        if tick <= after:
            break
        if tick <= now:
            found.add(tick)
            if len(found) > catch_up:
                break
    return sorted(found)[-(catch_up + 1) :]


def _check_aware(moment: dt.datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware instant, got {moment!r}")
