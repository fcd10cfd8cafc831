"""Handlers for the executor tests, and the helpers those tests share.

The process executor imports this module in its child processes by the flow reference
`FLOW_REF`, so it must stay importable on its own: no test fixtures, no pytest imports.
Handlers coordinate with tests through files (a marker written when a handler starts, another
it waits for), which works the same across threads and processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import msgspec

from pgflow.context import Context
from pgflow.executors.base import Job, JobResult
from pgflow.flow import Flow

flow = Flow("exec_tests")
FLOW_REF = f"{__name__}:flow"


# -- handlers ------------------------------------------------------------------------------------


@flow.step()
def echo(value: Any, ctx: Context) -> dict[str, Any]:
    return {
        "value": value,
        "run_id": ctx.run_id,
        "flow_slug": ctx.flow_slug,
        "step_slug": ctx.step_slug,
        "task_index": ctx.task_index,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
    }


@flow.step()
async def async_echo(value: Any, ctx: Context) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"value": value, "async": True, "thread": threading.current_thread().name}


def _check_positive(value: int) -> None:
    if value <= 0:
        raise ValueError(f"bad value {value}")


@flow.step()
def fail(value: int) -> None:
    _check_positive(value)


class Point(msgspec.Struct):
    x: int
    y: int


@flow.step()
def typed(point: Point) -> int:
    return point.x + point.y


@flow.step()
def block(spec: dict[str, Any]) -> str:
    """Writes its pid to `started`, waits until `release` exists (at most `max` seconds), then
    writes `finished`."""
    Path(spec["started"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + spec.get("max", 60)
    released = False
    while time.monotonic() < deadline:
        if Path(spec["release"]).exists():
            released = True
            break
        time.sleep(0.01)
    Path(spec["finished"]).write_text("released" if released else "gave up")
    return "released" if released else "gave up"


@flow.step()
async def async_block(spec: dict[str, Any]) -> str:
    """Like `block`, in a coroutine; writes `cancelled` when it is cancelled."""
    Path(spec["started"]).write_text(str(os.getpid()))
    try:
        while not Path(spec["release"]).exists():
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        Path(spec["cancelled"]).write_text("cancelled")
        raise
    Path(spec["finished"]).write_text("released")
    return "released"


@flow.step()
def wait_for_shutdown(spec: dict[str, Any], ctx: Context) -> dict[str, bool]:
    Path(spec["started"]).write_text(str(os.getpid()))
    ctx.shutdown.wait(timeout=spec.get("max", 60))
    return {"shutdown_seen": ctx.shutdown_requested}


@flow.step()
def read_flow_input(value: Any, ctx: Context) -> list[Any]:
    return [ctx.flow_input, ctx.flow_input]


@flow.step()
def read_run_headers(value: Any, ctx: Context) -> dict[str, Any]:
    # read twice: the context keeps what it loaded
    headers = ctx.headers
    assert ctx.headers is headers
    try:
        headers["added"] = "by the handler"  # type: ignore[index]
    except TypeError:
        writable = False
    else:
        writable = True
    scheduled_at = ctx.scheduled_at
    return {
        "headers": dict(headers),
        "writable": writable,
        "schedule": ctx.schedule,
        "scheduled_at": None if scheduled_at is None else scheduled_at.isoformat(),
    }


@flow.step()
def log_something(value: Any, ctx: Context) -> None:
    ctx.logger.info("handled %s", value)


@flow.step()
def log_every_level(value: Any, ctx: Context) -> None:
    for level in ("debug", "info", "warning", "error", "critical"):
        getattr(ctx.logger, level)("%s from %s", level, value)
    try:
        raise ValueError("the reason")
    except ValueError:
        ctx.logger.exception("caught while handling %s", value)


@flow.step()
def unpicklable(value: Any) -> Any:
    return threading.Lock()


@flow.step()
def start_a_process(value: Any) -> int | None:
    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join(30)
    return process.exitcode


# -- test-side helpers -----------------------------------------------------------------------------


def resolve_step(flow_slug: str, step_slug: str) -> Any:
    assert flow_slug == flow.slug
    return flow.get_step(step_slug)


def make_job(
    step_slug: str,
    value: Any = None,
    *,
    key: Hashable = None,
    timeout: float | None = 30.0,
    run_id: str = "00000000-0000-0000-0000-000000000001",
    task_index: int = 0,
    attempt: int = 1,
    flow_ref: str | None = FLOW_REF,
) -> Job:
    return Job(
        key=key if key is not None else (run_id, step_slug, task_index),
        flow_slug=flow.slug,
        step_slug=step_slug,
        input=value,
        run_id=run_id,
        task_index=task_index,
        attempt=attempt,
        timeout=timeout,
        flow_ref=flow_ref,
    )


def block_spec(directory: Path, name: str, max_seconds: float = 60) -> dict[str, Any]:
    return {
        "started": str(directory / f"{name}.started"),
        "release": str(directory / f"{name}.release"),
        "finished": str(directory / f"{name}.finished"),
        "cancelled": str(directory / f"{name}.cancelled"),
        "max": max_seconds,
    }


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.01)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Results:
    """An `on_done` callback that records results and lets tests wait for them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.items: list[JobResult] = []

    def __call__(self, result: JobResult) -> None:
        with self._changed:
            self.items.append(result)
            self._changed.notify_all()

    def wait_for(self, key: Hashable, timeout: float = 30.0) -> JobResult:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for result in self.items:
                    if result.key == key:
                        return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no result for {key!r} within {timeout}s")
                self._changed.wait(remaining)

    def delivered(self) -> list[Hashable]:
        with self._changed:
            return [result.key for result in self.items]
