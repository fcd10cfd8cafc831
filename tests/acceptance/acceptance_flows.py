"""Flows served by the acceptance tests' `pgflow worker` subprocesses, and the helpers the tests
use to drive those subprocesses.

The worker imports this module by reference, e.g. `pgflow worker acceptance_flows:basic`:
`WorkerPool` puts this directory on the subprocess's PYTHONPATH. The test modules import it too
(pytest puts this directory on `sys.path`), for the slugs and the helpers.

Handlers that must stay busy while a test does something to their worker (kill it, cut its
connections, signal it) wait for a gate file: the test creates the file to let them finish. They
wait on the file rather than on a timer, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec
import psycopg

from pgflow.flow import Flow

HERE = Path(__file__).resolve().parent

# -- flows ----------------------------------------------------------------------------------------

basic = Flow("acc_basic", max_attempts=2, base_delay=1, timeout=30)


@basic.step()
def double(run_input: dict[str, Any]) -> dict[str, int]:
    return {"value": run_input["n"] * 2}


@basic.step(depends_on=[double], timeout=10)
def add_one(deps: dict[str, Any]) -> dict[str, int]:
    return {"result": deps["double"]["value"] + 1}


def basic_output(n: int) -> dict[str, Any]:
    return {"add_one": {"result": 2 * n + 1}}


# The same slug as `basic` with another shape: a worker serving it finds a mismatch.
basic_changed = Flow("acc_basic")


@basic_changed.step(slug="double")
def double_again(run_input: dict[str, Any]) -> int:
    return int(run_input["n"]) * 2


failing = Flow("acc_failing", max_attempts=2, base_delay=0, timeout=30)

FAILURE_TEXT = "boom: the input asked for it"


@failing.step()
def explode(run_input: Any) -> None:
    raise ValueError(FAILURE_TEXT)


many = Flow("acc_many", max_attempts=3, base_delay=0, timeout=60)

# Long enough that one worker cannot drain the queue before the other joins in.
MANY_WORK_SECONDS = 0.02


@many.map()
def times_three(item: int) -> int:
    time.sleep(MANY_WORK_SECONDS)  # stands in for real work
    return item * 3


gated = Flow("acc_gated", max_attempts=3, base_delay=0, timeout=120)

# How long a gated handler waits for its gate; tests open gates long before that.
GATE_WAIT_SECONDS = 90.0


@gated.map()
def wait_for_gate(item: dict[str, Any]) -> int:
    gate = Path(item["gate"])
    deadline = time.monotonic() + GATE_WAIT_SECONDS
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was not opened within {GATE_WAIT_SECONDS:g} s")
        time.sleep(0.02)
    return int(item["i"]) * 10


# Each task appends its index to a file when its handler starts: a run log that shows every
# task that ran, and how many times.
recorded = Flow("acc_recorded", max_attempts=3, base_delay=0, timeout=60)


@recorded.map()
def record(item: dict[str, Any]) -> int:
    with open(item["log"], "a") as log:
        log.write(f"{item['i']}\n")
    time.sleep(0.005)
    return int(item["i"])


# The chaos test's flows (tests/acceptance/test_chaos.py): short timeouts, so that the tasks of
# killed workers come back soon (after timeout + 30 s, see pgflow.requeue_stalled_tasks).
CHAOS_WORK_SECONDS = 0.05
chaos_map = Flow("acc_chaos_map", max_attempts=5, base_delay=0, timeout=1)


@chaos_map.map()
def chaos_double(item: int) -> int:
    time.sleep(CHAOS_WORK_SECONDS)
    return item * 2


chaos_diamond = Flow("acc_chaos_diamond", max_attempts=5, base_delay=0, timeout=1)


@chaos_diamond.step()
def chaos_top(run_input: dict[str, int]) -> int:
    time.sleep(CHAOS_WORK_SECONDS)
    return run_input["n"] + 1


@chaos_diamond.step(depends_on=[chaos_top])
def chaos_left(deps: dict[str, int]) -> int:
    time.sleep(CHAOS_WORK_SECONDS)
    return deps["chaos_top"] * 2


@chaos_diamond.step(depends_on=[chaos_top])
def chaos_right(deps: dict[str, int]) -> int:
    time.sleep(CHAOS_WORK_SECONDS)
    return deps["chaos_top"] * 3


@chaos_diamond.step(depends_on=[chaos_left, chaos_right])
def chaos_bottom(deps: dict[str, int]) -> int:
    return deps["chaos_left"] + deps["chaos_right"]


def chaos_diamond_outputs(n: int) -> dict[str, int]:
    """Each step's output for input {"n": n}."""
    top = n + 1
    return {
        "chaos_top": top,
        "chaos_left": top * 2,
        "chaos_right": top * 3,
        "chaos_bottom": top * 5,
    }


def gated_input(gate: Path, count: int) -> list[dict[str, Any]]:
    return [{"i": i, "gate": str(gate)} for i in range(count)]


def gated_output(count: int) -> dict[str, Any]:
    return {"wait_for_gate": [i * 10 for i in range(count)]}


not_a_flow = "a string, not a Flow"

# a flow whose steps were never defined (for instance because their module was not imported)
empty = Flow("acc_empty")


class Amount(msgspec.Struct):
    cents: int


# a root step with a typed input, which `pgflow start acceptance_flows:typed` checks
typed = Flow("acc_typed")


@typed.step()
def take(amount: Amount) -> int:
    return amount.cents


# -- helpers for the tests ------------------------------------------------------------------------

T = TypeVar("T")


def pgflow_command() -> list[str]:
    """The installed `pgflow` command (as conftest.py's `run_pgflow` finds it)."""
    script = Path(sys.executable).with_name("pgflow")
    if script.exists():
        return [str(script)]
    found = shutil.which("pgflow")
    return [found] if found else [sys.executable, "-m", "pgflow"]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's (already cleaned) environment, with this directory importable."""
    env = dict(os.environ)
    paths = [str(HERE), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = details()
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}"
                + (f"\n{extra}" if extra else "")
            )
        time.sleep(0.05)


class WorkerProcess:
    """One `pgflow worker` subprocess; its stdout and stderr go to files."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, files: list[IO[bytes]]):
        self.popen = popen
        self.log_path = log_path
        self._files = files

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def function_name(self) -> str:
        """What the worker writes into pgflow.workers.function_name."""
        return f"{socket.gethostname()}:{self.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        state = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        return f"worker pid {self.pid} ({state}); its log:\n{self.log()}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker pid {self.pid} did not exit within {timeout:g} s\n{self.describe()}"
            ) from None

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(
            lambda: text in self.log(),
            timeout=timeout,
            what=f"{text!r} in the worker's log",
            details=self.describe,
        )

    def worker_ids(self, conn: psycopg.Connection[Any]) -> list[str]:
        rows = conn.execute(
            "select worker_id::text from pgflow.workers where function_name = %s "
            "order by queue_name",
            (self.function_name,),
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        """Kill the worker and anything it started (its process group), then reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)
        for file in self._files:
            file.close()


class WorkerPool:
    """Starts `pgflow worker` subprocesses against one database and kills leftovers at the end."""

    def __init__(self, dsn: str, directory: Path, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.directory = directory
        self.env = env  # added to every worker's environment
        self.workers: list[WorkerProcess] = []

    def start(
        self,
        flows: Sequence[str],
        *options: str,
        conn: psycopg.Connection[Any],
        ready_timeout: float | None = 60,
    ) -> WorkerProcess:
        """Start a worker for `flows` ("acceptance_flows:NAME") and wait until it registered
        one pgflow.workers row per flow (unless `ready_timeout` is None)."""
        index = len(self.workers)
        log_path = self.directory / f"worker-{index}.log"
        out_path = self.directory / f"worker-{index}.out"
        stderr = log_path.open("wb")
        stdout = out_path.open("wb")
        popen = subprocess.Popen(
            [*pgflow_command(), "worker", *flows, "--dsn", self.dsn, *options],
            cwd=self.directory,
            env=subprocess_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            # its own process group, so teardown can kill executor children along with it
            start_new_session=True,
        )
        worker = WorkerProcess(popen, log_path, [stdout, stderr])
        self.workers.append(worker)
        if ready_timeout is None:
            return worker

        def registered() -> bool:
            if not worker.alive():
                raise AssertionError(f"the worker exited while starting\n{worker.describe()}")
            return len(worker.worker_ids(conn)) == len(flows)

        wait_until(
            registered,
            timeout=ready_timeout,
            what="the worker to register",
            details=worker.describe,
        )
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def start_run(conn: psycopg.Connection[Any], flow_slug: str, run_input: Any) -> str:
    from psycopg.types.json import Jsonb

    row = conn.execute(
        "select run_id::text from pgflow.start_flow(%s, %s)", (flow_slug, Jsonb(run_input))
    ).fetchone()
    assert row is not None
    return str(row[0])


def run_row(conn: psycopg.Connection[Any], run_id: str) -> tuple[str, Any]:
    """(status, output) of a run."""
    row = conn.execute(
        "select status, output from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone()
    assert row is not None, f"run {run_id} does not exist"
    return str(row[0]), row[1]


def wait_for_run(
    conn: psycopg.Connection[Any],
    run_id: str,
    *,
    timeout: float = 60,
    details: Callable[[], str] = lambda: "",
) -> tuple[str, Any]:
    """Wait until the run has finished; returns (status, output)."""

    def finished() -> tuple[str, Any] | None:
        status, output = run_row(conn, run_id)
        return (status, output) if status != "started" else None

    return wait_until(finished, timeout=timeout, what=f"run {run_id} to finish", details=details)


def task_counts(conn: psycopg.Connection[Any], run_id: str) -> dict[str, int]:
    rows = conn.execute(
        "select status, count(*) from pgflow.step_tasks where run_id = %s group by status",
        (run_id,),
    ).fetchall()
    return {str(status): int(count) for status, count in rows}


def wait_for_started_tasks(
    conn: psycopg.Connection[Any],
    run_id: str,
    count: int,
    *,
    timeout: float = 60,
    details: Callable[[], str] = lambda: "",
) -> list[int]:
    """Wait until exactly `count` tasks of the run are started; returns their indexes."""

    def started() -> list[int] | None:
        rows = conn.execute(
            "select task_index from pgflow.step_tasks where run_id = %s and status = 'started' "
            "order by task_index",
            (run_id,),
        ).fetchall()
        return [int(r[0]) for r in rows] if len(rows) == count else None

    return wait_until(
        started, timeout=timeout, what=f"{count} started task(s) of run {run_id}", details=details
    )
