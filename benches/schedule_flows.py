"""The flow of benches/schedule_ticks.py: a schedule that ticks every second (cronsim's 6-field
form, seconds first)."""

from __future__ import annotations

from typing import Any

from pgflow import Flow, Schedule

ticker = Flow(
    "ticker", schedules=[Schedule("every_second", "* * * * * *", input={"hello": "tick"})]
)


@ticker.step()
def echo(value: Any) -> Any:
    return value
