"""Which workers are alive, by their rows in `pgflow.workers`: the one definition that the
clients, the `pgflow` command (and anything else that shows workers) share.

A worker has a row per flow it serves (`queue_name` is the flow's slug), refreshes
`last_heartbeat_at` every heartbeat interval, and sets `stopped_at` when it stops cleanly. One
killed outright leaves its row as it was: it is *presumed dead* once it has missed
`MISSED_HEARTBEATS` heartbeats at the default interval. The expressions below are SQL over the
alias `w` of `pgflow.workers`, evaluated with the database's clock (`now()`), so the clocks of
the machines that look do not matter.
"""

from __future__ import annotations

from typing import Final

DEFAULT_HEARTBEAT_INTERVAL: Final = 5.0
"""Seconds between a worker's heartbeats, unless `WorkerOptions.heartbeat_interval` says
otherwise."""

MISSED_HEARTBEATS: Final = 3
PRESUMED_DEAD_AFTER: Final = MISSED_HEARTBEATS * DEFAULT_HEARTBEAT_INTERVAL
"""Seconds without a heartbeat after which a worker that did not stop is presumed dead."""

LIVE: Final = (
    "(w.stopped_at is null and "
    f"w.last_heartbeat_at > now() - interval '{PRESUMED_DEAD_AFTER:g} seconds')"
)
"""A worker that has not stopped and has sent a heartbeat recently."""

STATE: Final = (
    f"case when w.stopped_at is not null then 'stopped' when {LIVE} then 'live' "
    "else 'presumed dead' end"
)
"""'live', 'stopped' or 'presumed dead'."""


def serving_count(flow_slug: str) -> str:
    """A scalar subquery: how many live workers serve the flow whose slug is the SQL expression
    `flow_slug` (a placeholder or a column); a deprecated worker is finishing, not serving."""
    return (
        f"(select count(*)::int from pgflow.workers w where w.queue_name = {flow_slug} "
        f"and {LIVE} and w.deprecated_at is null)"
    )


def no_worker_warning(flow_slug: str) -> str:
    """What to say when no live worker serves a flow whose run someone waits for."""
    return (
        f"no live worker serves flow {flow_slug!r} (none has sent a heartbeat in the last "
        f"{PRESUMED_DEAD_AFTER:g} s): the run waits until one does; start one with "
        f"`pgflow worker <module>:<flow>` for the module that defines {flow_slug!r}"
    )
