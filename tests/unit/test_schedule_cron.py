"""Schedules without a database: declarations, and the cron arithmetic workers fire by,
daylight-saving gaps and overlaps included (docs/schedules.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pgflow import Flow, FlowDefinitionError, Schedule, ScheduleError
from pgflow.flow.schedule import due_ticks, next_tick

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_schedule_checks_what_it_is_given() -> None:
    schedule = Schedule("nightly", "  0  3 * * * ", input={"full": True}, timezone="Europe/Paris")
    assert schedule.cron == "0 3 * * *"
    with pytest.raises(ScheduleError, match="cron expression '0 3 \\* \\*' must have 5 fields"):
        Schedule("x", "0 3 * *")
    with pytest.raises(ScheduleError, match="does not parse: Bad hour"):
        Schedule("x", "0 25 * * *")
    with pytest.raises(ScheduleError, match="time zone 'Mars/Olympus' is not known"):
        Schedule("x", "0 3 * * *", timezone="Mars/Olympus")
    with pytest.raises(ScheduleError, match="catch_up must be a whole number from 0"):
        Schedule("x", "0 3 * * *", catch_up=-1)
    with pytest.raises(ScheduleError, match="schedule name 'two words' is not valid"):
        Schedule("two words", "0 3 * * *")


def test_a_flow_refuses_two_schedules_of_one_name() -> None:
    flow = Flow("scheduled", schedules=[Schedule("a", "0 3 * * *")])
    assert [s.name for s in flow.schedules] == ["a"]
    with pytest.raises(FlowDefinitionError, match="two schedules are named 'a'"):
        Flow("scheduled", schedules=[Schedule("a", "0 3 * * *"), Schedule("a", "0 4 * * *")])
    with pytest.raises(FlowDefinitionError, match=r"must be pgflow\.Schedule objects"):
        Flow("scheduled", schedules=["0 3 * * *"])  # type: ignore[list-item]


def test_next_tick_is_strictly_after_the_instant_and_in_utc() -> None:
    assert next_tick("0 3 * * *", "UTC", utc(2024, 1, 1, 3)) == utc(2024, 1, 2, 3)
    assert next_tick("0 3 * * *", "UTC", utc(2024, 1, 1, 2, 59, 59, 999999)) == utc(2024, 1, 1, 3)
    paris = next_tick("0 3 * * *", "Europe/Paris", utc(2024, 1, 1))
    assert paris == utc(2024, 1, 1, 2) and paris is not None and paris.tzinfo == UTC
    assert next_tick("*/10 * * * * *", "UTC", utc(2024, 1, 1, 0, 0, 5)) == utc(2024, 1, 1, 0, 0, 10)


def test_due_ticks_fire_the_latest_and_catch_up_at_most_n_missed() -> None:
    after = utc(2024, 1, 1, 0, 0)  # the last tick fired
    now = utc(2024, 1, 1, 0, 10, 30)  # ten ticks came due since
    assert due_ticks("* * * * *", "UTC", after, now, 0) == [utc(2024, 1, 1, 0, 10)]
    assert due_ticks("* * * * *", "UTC", after, now, 3) == [
        utc(2024, 1, 1, 0, minute) for minute in (7, 8, 9, 10)
    ]
    # catching up more than there is gives what there is, never the tick already fired
    assert due_ticks("* * * * *", "UTC", after, now, 50) == [
        utc(2024, 1, 1, 0, minute) for minute in range(1, 11)
    ]
    # a tick exactly at now is due; none before the next one is
    assert due_ticks("* * * * *", "UTC", after, utc(2024, 1, 1, 0, 1), 0) == [utc(2024, 1, 1, 0, 1)]
    assert due_ticks("* * * * *", "UTC", utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 1, 59), 5) == []


def test_a_long_outage_costs_no_more_than_the_ticks_returned() -> None:
    # a tick per second for ten years: walking forward would take 300 million steps
    ticks = due_ticks("* * * * * *", "UTC", utc(2014, 1, 1), utc(2024, 1, 1, 12), 2)
    assert ticks == [utc(2024, 1, 1, 11, 59, 58), utc(2024, 1, 1, 11, 59, 59), utc(2024, 1, 1, 12)]


# Europe/Paris: on 2024-03-31 the clocks jump from 02:00 to 03:00 (a gap); on 2024-10-27 they
# go back from 03:00 to 02:00 (02:00-03:00 happens twice: an overlap).


def _ticks(cron: str, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    moment = start
    for _ in range(count):
        tick = next_tick(cron, "Europe/Paris", moment)
        assert tick is not None
        found.append(tick)
        moment = tick
    return found


def test_dst_gap_a_fixed_time_that_does_not_exist_runs_once_right_after_the_gap() -> None:
    ticks = _ticks("30 2 * * *", utc(2024, 3, 29, 12), 3)
    # 02:30 on the 30th (CET, UTC+1); on the 31st 02:30 does not exist: 03:00 CEST (01:00 UTC)
    assert ticks == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]


def test_dst_gap_an_interval_skips_the_times_that_do_not_exist() -> None:
    ticks = _ticks("*/30 * * * *", utc(2024, 3, 31, 0, 0), 3)  # 01:00 CET
    # 01:30 CET, then 03:00 CEST: 02:00 and 02:30 do not exist; each tick is 30 min of real time
    assert ticks == [utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 30)]


def test_dst_overlap_a_fixed_time_runs_once_at_its_first_occurrence() -> None:
    ticks = _ticks("30 2 * * *", utc(2024, 10, 26, 12), 3)
    # the 27th: 02:30 CEST (00:30 UTC) only, not 02:30 CET an hour later
    assert ticks == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30), utc(2024, 10, 29, 1, 30)]
    # walking back from after the overlap finds the same single tick
    assert due_ticks(
        "30 2 * * *", "Europe/Paris", utc(2024, 10, 26, 12), utc(2024, 10, 27, 3), 5
    ) == [utc(2024, 10, 27, 0, 30)]


def test_dst_overlap_an_interval_runs_on_both_occurrences() -> None:
    ticks = _ticks("0,30 * * * *", utc(2024, 10, 26, 23, 45), 4)
    # 02:00 and 02:30 CEST, then 02:00 and 02:30 CET again: four instants 30 minutes apart
    assert ticks == [utc(2024, 10, 27, 0, 0) + timedelta(minutes=30 * i) for i in range(4)]
    assert len(set(ticks)) == 4
