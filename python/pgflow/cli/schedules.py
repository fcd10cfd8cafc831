"""`pgflow schedules add|list|pause|resume|remove`: schedules managed at run time (and the
code's, listed and paused); see docs/schedules.md."""

from __future__ import annotations

import argparse
from datetime import datetime

from pgflow.cli.parser import (
    EXIT_OK,
    Subparsers,
    add_command,
    add_group,
    database,
    json_arg,
    non_negative_int,
)
from pgflow.client import Client, ScheduleInfo
from pgflow.flow.schedule import MAX_CATCH_UP


def register(commands: Subparsers) -> None:
    group = add_group(commands, "schedules", "Start runs on cron schedules: add, list, pause.")
    p = add_command(
        group,
        "add",
        cmd_add,
        "Create a schedule at run time: each tick of CRON starts a run of FLOW. Workers "
        "serving the flow fire it; reconciling the code's schedules never touches it.",
    )
    p.add_argument("flow", metavar="FLOW", help="the flow's slug")
    p.add_argument("name", metavar="NAME", help="the schedule's name (letters, digits, _)")
    p.add_argument(
        "cron",
        metavar="CRON",
        help="5 fields (minute hour day month weekday) or 6 (seconds first); quote it: '0 3 * * *'",
    )
    p.add_argument(
        "--input", type=json_arg, default=None, metavar="JSON", help="the run input (default null)"
    )
    p.add_argument(
        "--timezone",
        default="UTC",
        metavar="TZ",
        help="the IANA time zone CRON is read in (default UTC), such as Europe/Paris",
    )
    p.add_argument(
        "--catch-up",
        type=non_negative_int,
        default=0,
        metavar="N",
        help=f"after downtime, fire at most N missed ticks (0, the default, skips them; at most "
        f"{MAX_CATCH_UP})",
    )
    p = add_command(group, "list", cmd_list, "Schedules, by flow and name, with their next tick.")
    p.add_argument("--flow", default=None, help="only the schedules of this flow")
    for name, handler, text in (
        ("pause", cmd_pause, "Stop a schedule from firing (a redeploy keeps the pause)."),
        ("resume", cmd_resume, "Fire a paused schedule again, from its next tick."),
        (
            "remove",
            cmd_remove,
            "Delete a schedule created at run time, or one the code no longer declares.",
        ),
    ):
        p = add_command(group, name, handler, text)
        p.add_argument("flow", metavar="FLOW", help="the flow's slug")
        p.add_argument("name", metavar="NAME", help="the schedule's name")


def cmd_add(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        info = client.add_schedule(
            args.flow,
            args.name,
            args.cron,
            args.input,
            timezone=args.timezone,
            catch_up=args.catch_up,
        )
    print(f"schedule {info.name} of flow {info.flow_slug} added; next tick {_when(info)}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        schedules = client.schedules(flow=args.flow)
    if not schedules:
        print("no schedules" + (f" of flow {args.flow}" if args.flow else ""))
        return EXIT_OK
    rows = [
        (
            s.flow_slug,
            s.name,
            s.cron,
            s.timezone,
            s.origin,
            s.state,
            _when(s) if s.state == "active" else "-",
            _time(s.last_tick_at),
        )
        for s in schedules
    ]
    header = ("flow", "name", "cron", "timezone", "origin", "state", "next tick", "last tick")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        info = client.pause_schedule(args.flow, args.name)
    print(f"schedule {info.name} of flow {info.flow_slug} paused")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        info = client.resume_schedule(args.flow, args.name)
    print(f"schedule {info.name} of flow {info.flow_slug} resumed; next tick {_when(info)}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        client.remove_schedule(args.flow, args.name)
    print(f"schedule {args.name} of flow {args.flow} removed")
    return EXIT_OK


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S%z}"


def _when(info: ScheduleInfo) -> str:
    return "none within 50 years" if info.next_tick_at is None else _time(info.next_tick_at)
