"""The same scenarios run against every builtin executor (thread, process, asyncio, inline).

Handlers live in `_exec_handlers`, which the process executor's children import by reference.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pgflow.executors.base import Executor, ExecutorBusyError, ExecutorClosedError
from pgflow.plugins import create_executor

try:
    from . import _exec_handlers as handlers
except ImportError:  # tests/unit is not a package: pytest put its directory on sys.path
    import _exec_handlers as handlers  # type: ignore[no-redef]

Results = handlers.Results
block_spec = handlers.block_spec
make_job = handlers.make_job
pid_alive = handlers.pid_alive
wait_until = handlers.wait_until

ALL = ["thread", "process", "asyncio", "inline"]
# Executors whose submit() returns while the handler runs (inline runs it inside submit()).
CONCURRENT = ["thread", "process", "asyncio"]
# The thread pools that may run a sync handler, by executor (for joining them in tests).
SYNC_THREAD_PREFIX = {"thread": "pgflow-thread-", "asyncio": "pgflow-asyncio-sync-"}

MakeExecutor = Callable[..., Executor]


@pytest.fixture
def make_executor() -> Iterator[MakeExecutor]:
    """Create and start executors by name; whatever a test leaves running is killed after it."""
    created: list[Executor] = []

    def make(
        name: str,
        concurrency: int = 2,
        load_flow_input: Callable[[str], Any] | None = None,
        resolve_step: Callable[[str, str], Any] = handlers.resolve_step,
        load_run_headers: Callable[[str], Mapping[str, str]] | None = None,
    ) -> Executor:
        executor = create_executor(
            name,
            concurrency=concurrency,
            resolve_step=resolve_step,
            load_flow_input=load_flow_input,
            load_run_headers=load_run_headers,
        )
        created.append(executor)
        executor.start()
        return executor

    yield make
    for executor in created:
        executor.kill()


def join_sync_threads(name: str) -> None:
    """After shutdown, wait for the executor's handler threads to exit: then no late result
    can still be on its way."""
    prefix = SYNC_THREAD_PREFIX[name]
    for thread in threading.enumerate():
        if thread.name.startswith(prefix):
            thread.join(timeout=30)
            assert not thread.is_alive(), f"{thread.name} did not exit"


# -- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_success_returns_output_with_context(name: str, make_executor: MakeExecutor) -> None:
    executor = make_executor(name)
    results = Results()
    job = make_job("echo", {"n": 1}, task_index=3, attempt=2)
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.ok, result
    assert result.error_type is None and not result.timed_out
    output = result.output
    assert output["value"] == {"n": 1}
    assert (output["run_id"], output["flow_slug"], output["step_slug"]) == (
        job.run_id,
        "exec_tests",
        "echo",
    )
    assert (output["task_index"], output["attempt"]) == (3, 2)
    if name == "process":
        assert output["pid"] != os.getpid()
    else:
        assert output["pid"] == os.getpid()


@pytest.mark.parametrize("name", ALL)
def test_exception_becomes_failed_result(name: str, make_executor: MakeExecutor) -> None:
    executor = make_executor(name)
    results = Results()
    job = make_job("fail", -7)
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert not result.ok and not result.timed_out
    assert result.error_type == "ValueError"
    assert result.error_message == "bad value -7"
    assert result.traceback is not None
    assert "_check_positive" in result.traceback
    assert result.traceback.rstrip().endswith("ValueError: bad value -7")


@pytest.mark.parametrize("name", ALL)
def test_invalid_typed_input_fails_with_input_validation_error(
    name: str, make_executor: MakeExecutor
) -> None:
    executor = make_executor(name)
    results = Results()
    good, bad = (
        make_job("typed", {"x": 1, "y": 2}, key="good"),
        make_job("typed", {"x": 1}, key="bad"),
    )
    executor.submit(good, results)
    assert results.wait_for("good").output == 3
    executor.submit(bad, results)
    result = results.wait_for("bad")
    assert result.error_type == "InputValidationError"
    assert "y" in (result.error_message or "")


@pytest.mark.parametrize("name", ALL)
def test_async_handler(name: str, make_executor: MakeExecutor) -> None:
    executor = make_executor(name)
    results = Results()
    job = make_job("async_echo", 5)
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.ok, result
    assert result.output["value"] == 5 and result.output["async"] is True
    if name == "asyncio":
        assert result.output["thread"] == "pgflow-asyncio"


def test_asyncio_executor_runs_sync_handlers_off_the_loop(make_executor: MakeExecutor) -> None:
    executor = make_executor("asyncio")
    results = Results()
    job = make_job("echo", 1)
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.ok, result
    assert result.output["thread"].startswith("pgflow-asyncio-sync-")


@pytest.mark.parametrize("name", ALL)
def test_flow_input_is_loaded_lazily_once_per_task(name: str, make_executor: MakeExecutor) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def load(run_id: str) -> Any:
        with lock:
            calls.append(run_id)
        return {"input_of": run_id}

    executor = make_executor(name, load_flow_input=load)
    results = Results()
    untouched, reader = make_job("echo", 1, key="echo"), make_job("read_flow_input", key="read")
    executor.submit(untouched, results)
    assert results.wait_for("echo").ok
    assert calls == []
    executor.submit(reader, results)
    result = results.wait_for("read")
    assert result.ok, result
    assert result.output == [{"input_of": reader.run_id}] * 2
    assert calls == [reader.run_id]


@pytest.mark.parametrize("name", ALL)
def test_flow_input_without_loader_fails_clearly(name: str, make_executor: MakeExecutor) -> None:
    executor = make_executor(name)
    results = Results()
    job = make_job("read_flow_input")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.error_type == "FlowInputUnavailable"
    assert "load_flow_input" in (result.error_message or "")


@pytest.mark.parametrize("name", ALL)
def test_run_headers_are_loaded_lazily_once_per_task_and_read_only(
    name: str, make_executor: MakeExecutor
) -> None:
    calls: list[str] = []
    lock = threading.Lock()
    tick = "2025-03-30T01:00:00.000000Z"

    def load(run_id: str) -> Mapping[str, str]:
        with lock:
            calls.append(run_id)
        return {"pgflow-schedule": "nightly", "pgflow-scheduled-at": tick, "run": run_id}

    executor = make_executor(name, load_run_headers=load)
    results = Results()
    untouched, reader = make_job("echo", 1, key="echo"), make_job("read_run_headers", key="read")
    executor.submit(untouched, results)
    assert results.wait_for("echo").ok
    assert calls == []  # a handler that never reads them costs nothing
    executor.submit(reader, results)
    result = results.wait_for("read")
    assert result.ok, result
    assert result.output == {
        "headers": {
            "pgflow-schedule": "nightly",
            "pgflow-scheduled-at": tick,
            "run": reader.run_id,
        },
        "writable": False,
        "schedule": "nightly",
        "scheduled_at": "2025-03-30T01:00:00+00:00",
    }
    assert calls == [reader.run_id]


@pytest.mark.parametrize("name", ALL)
def test_run_headers_without_loader_fail_clearly(name: str, make_executor: MakeExecutor) -> None:
    executor = make_executor(name, load_flow_input=lambda run_id: {})
    results = Results()
    job = make_job("read_run_headers")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.error_type == "RunHeadersUnavailable"
    assert "load_run_headers" in (result.error_message or "")
    assert job.run_id in (result.error_message or "")


@pytest.mark.parametrize("name", ALL)
def test_handler_logs_carry_task_identifiers(
    name: str, make_executor: MakeExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # before the executor starts: children copy the level
    executor = make_executor(name)
    results = Results()
    job = make_job("log_something", "abc", task_index=4)
    executor.submit(job, results)
    assert results.wait_for(job.key).ok
    wait_until(
        lambda: any(r.name == "pgflow.step.exec_tests.log_something" for r in caplog.records),
        "the handler's log record",
    )
    record = next(r for r in caplog.records if r.name == "pgflow.step.exec_tests.log_something")
    assert record.getMessage() == "handled abc"
    assert record.__dict__["run_id"] == job.run_id
    assert record.__dict__["task_index"] == 4
    assert record.__dict__["step_slug"] == "log_something"


@pytest.mark.parametrize("name", ALL)
def test_handler_logs_arrive_at_every_level_with_exception_text(
    name: str, make_executor: MakeExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    # As `pgflow worker` sets it up: the root at WARNING, pgflow's loggers more verbose. A
    # process child must honour the step logger's own level, not only the root's.
    caplog.set_level(logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="pgflow.step")
    executor = make_executor(name)
    results = Results()
    job = make_job("log_every_level", "abc")
    executor.submit(job, results)
    assert results.wait_for(job.key).ok
    name_ = "pgflow.step.exec_tests.log_every_level"

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == name_]

    wait_until(lambda: len(records()) == 6, "six log records from the handler")
    assert [(r.levelname, r.getMessage()) for r in records()] == [
        ("DEBUG", "debug from abc"),
        ("INFO", "info from abc"),
        ("WARNING", "warning from abc"),
        ("ERROR", "error from abc"),
        ("CRITICAL", "critical from abc"),
        ("ERROR", "caught while handling abc"),
    ]
    assert all(r.__dict__["run_id"] == job.run_id for r in records())
    formatted = logging.Formatter().format(records()[-1])
    assert "Traceback (most recent call last)" in formatted
    assert "ValueError: the reason" in formatted


# -- timeouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["thread", "asyncio"])
def test_timeout_fails_attempt_while_sync_handler_still_blocked(
    name: str, make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(name, concurrency=1)
    results = Results()
    spec = block_spec(tmp_path, "stuck")
    stuck = make_job("block", spec, key="stuck", timeout=0.3)
    executor.submit(stuck, results)
    result = results.wait_for("stuck")
    assert not result.ok and result.timed_out
    assert result.error_type == "TimeoutError"
    assert result.error_message == "the handler exceeded its timeout of 0.3s"
    assert not Path(spec["finished"]).exists(), "the result came only after the handler returned"

    # The stuck thread does not hold the slot: another job runs while it is still blocked.
    assert executor.free_slots() == 1
    executor.submit(make_job("echo", 1, key="next"), results)
    assert results.wait_for("next").ok
    assert not Path(spec["finished"]).exists()

    # Once released, the late result is discarded.
    Path(spec["release"]).touch()
    wait_until(lambda: Path(spec["finished"]).exists(), "the stuck handler to finish")
    assert executor.shutdown(grace=5) == []
    join_sync_threads(name)
    assert results.delivered() == ["stuck", "next"]


def test_asyncio_timeout_cancels_async_handler(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor("asyncio", concurrency=1)
    results = Results()
    spec = block_spec(tmp_path, "stuck")
    executor.submit(make_job("async_block", spec, key="stuck", timeout=0.3), results)
    result = results.wait_for("stuck")
    assert result.timed_out and result.error_type == "TimeoutError"
    wait_until(lambda: Path(spec["cancelled"]).exists(), "the handler to be cancelled")
    assert not Path(spec["finished"]).exists()
    assert executor.free_slots() == 1


def test_process_timeout_terminates_the_child(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor("process", concurrency=1)
    results = Results()
    spec = block_spec(tmp_path, "stuck")
    executor.submit(make_job("block", spec, key="stuck", timeout=0.5), results)
    result = results.wait_for("stuck")
    assert result.timed_out and result.error_type == "TimeoutError"
    assert result.error_message == "the handler exceeded its timeout of 0.5s"
    pid = int(Path(spec["started"]).read_text())
    wait_until(lambda: not pid_alive(pid), "the timed-out child to be gone")
    assert not Path(spec["finished"]).exists()

    # A new child serves the next job (once it has started: spawning takes a moment).
    wait_until(lambda: executor.free_slots() == 1, "a replacement child to offer its slot")
    executor.submit(make_job("echo", 1, key="next"), results)
    next_result = results.wait_for("next")
    assert next_result.ok and next_result.output["pid"] != pid


def test_inline_timeout_is_checked_after_the_handler_returns(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor("inline")
    results = Results()
    spec = block_spec(tmp_path, "slow", max_seconds=0.3)  # never released: returns after 0.3 s
    executor.submit(make_job("block", spec, key="slow", timeout=0.05), results)
    # Inline: the result is there as soon as submit() returns, and the handler did finish.
    assert results.delivered() == ["slow"]
    assert Path(spec["finished"]).read_text() == "gave up"
    result = results.items[0]
    assert result.timed_out and result.error_type == "TimeoutError"


# -- slots and shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONCURRENT)
def test_free_slots_follow_jobs_in_flight(
    name: str, make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(name, concurrency=2)
    results = Results()
    assert executor.free_slots() == 2
    first, second = block_spec(tmp_path, "first"), block_spec(tmp_path, "second")
    executor.submit(make_job("block", first, key="first"), results)
    assert executor.free_slots() == 1
    executor.submit(make_job("block", second, key="second"), results)
    assert executor.free_slots() == 0
    with pytest.raises(ExecutorBusyError, match="no free slot"):
        executor.submit(make_job("echo", 0, key="refused"), results)

    Path(first["release"]).touch()
    assert results.wait_for("first").output == "released"
    wait_until(lambda: executor.free_slots() == 1, "the first slot to free")
    executor.submit(make_job("echo", 1, key="refill"), results)
    assert results.wait_for("refill").ok
    wait_until(lambda: executor.free_slots() == 1, "the refill slot to free")

    Path(second["release"]).touch()
    assert results.wait_for("second").output == "released"
    wait_until(lambda: executor.free_slots() == 2, "every slot to free")
    assert "refused" not in results.delivered()


@pytest.mark.parametrize("name", ALL)
def test_refilling_free_slots_runs_every_job_exactly_once(
    name: str, make_executor: MakeExecutor
) -> None:
    executor = make_executor(name, concurrency=3)
    results = Results()
    pending = list(range(100))
    # As the worker does: fill every free slot, then wait for one to free.
    while pending:
        free = executor.free_slots()
        for _ in range(min(free, len(pending))):
            index = pending.pop()
            executor.submit(make_job("echo", index, key=index), results)
        if not free:
            wait_until(lambda: executor.free_slots() > 0, "a slot to free")
    for index in range(100):
        assert results.wait_for(index).output["value"] == index
    assert not pending
    assert sorted(results.delivered()) == list(range(100))  # once each
    wait_until(lambda: executor.free_slots() == executor.concurrency, "every slot to free")


def test_inline_runs_one_job_inside_submit(make_executor: MakeExecutor) -> None:
    seen_during_run: list[int] = []
    executor: Executor | None = None

    def resolve(flow_slug: str, step_slug: str) -> Any:
        assert executor is not None
        seen_during_run.append(executor.free_slots())
        return handlers.resolve_step(flow_slug, step_slug)

    executor = make_executor("inline", resolve_step=resolve)
    results = Results()
    assert executor.free_slots() == 1
    executor.submit(make_job("echo", 1), results)
    assert len(results.items) == 1 and results.items[0].ok
    assert results.items[0].output["thread"] == threading.current_thread().name
    assert seen_during_run == [0]
    assert executor.free_slots() == 1


@pytest.mark.parametrize("name", CONCURRENT)
def test_shutdown_lets_in_flight_jobs_finish_and_signals_them(
    name: str, make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(name)
    results = Results()
    spec = block_spec(tmp_path, "polite")
    executor.submit(make_job("wait_for_shutdown", spec, key="polite"), results)
    wait_until(lambda: Path(spec["started"]).exists(), "the handler to start")
    assert executor.shutdown(grace=30) == []
    result = results.wait_for("polite", timeout=0)
    assert result.ok and result.output == {"shutdown_seen": True}
    assert executor.free_slots() == 0
    with pytest.raises(ExecutorClosedError):
        executor.submit(make_job("echo", 1), results)
    assert executor.shutdown(grace=30) == []  # idempotent


@pytest.mark.parametrize("name", CONCURRENT)
def test_shutdown_returns_jobs_unfinished_after_grace(
    name: str, make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(name)
    results = Results()
    spec = block_spec(tmp_path, "stubborn")
    stubborn = make_job("block", spec, key="stubborn")
    executor.submit(stubborn, results)
    executor.submit(make_job("echo", 1, key="quick"), results)
    assert results.wait_for("quick").ok
    wait_until(lambda: Path(spec["started"]).exists(), "the handler to start")

    assert executor.shutdown(grace=0.2) == [stubborn]

    if name == "process":
        pid = int(Path(spec["started"]).read_text())
        wait_until(lambda: not pid_alive(pid), "the unfinished job's child to be terminated")
        assert not Path(spec["finished"]).exists()
    else:
        # Threads cannot be stopped: let the handler return, then check its result was dropped.
        Path(spec["release"]).touch()
        wait_until(lambda: Path(spec["finished"]).exists(), "the handler to return")
        join_sync_threads(name)
    assert results.delivered() == ["quick"]


@pytest.mark.parametrize("name", ALL)
def test_submit_before_start_is_refused(name: str) -> None:
    executor = create_executor(name, concurrency=1, resolve_step=handlers.resolve_step)
    with pytest.raises(ExecutorClosedError, match="not running"):
        executor.submit(make_job("echo", 1), Results())
    assert executor.free_slots() == 0
    assert executor.shutdown(grace=0) == []


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_bad_concurrency_is_rejected(name: str, concurrency: Any) -> None:
    with pytest.raises(ValueError, match="concurrency of at least 1"):
        create_executor(name, concurrency=concurrency, resolve_step=handlers.resolve_step)


# -- process executor specifics ------------------------------------------------------------------


def test_process_child_killed_fails_its_job_and_is_replaced(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor("process", concurrency=2)
    results = Results()
    spec = block_spec(tmp_path, "victim")
    executor.submit(make_job("block", spec, key="victim"), results)
    wait_until(lambda: Path(spec["started"]).exists(), "the handler to start")
    pid = int(Path(spec["started"]).read_text())

    os.kill(pid, signal.SIGKILL)
    result = results.wait_for("victim")
    assert not result.ok and not result.timed_out
    assert result.error_type == "WorkerProcessDied"
    assert f"pid {pid}" in (result.error_message or "")
    assert "SIGKILL" in (result.error_message or "")

    wait_until(lambda: executor.free_slots() == 2, "the pool to be whole again")
    for index in range(3):
        executor.submit(make_job("echo", index, key=index), results)
        assert results.wait_for(index).ok


def test_process_unpicklable_output_fails_clearly(make_executor: MakeExecutor) -> None:
    executor = make_executor("process", concurrency=1)
    results = Results()
    executor.submit(make_job("unpicklable", key="lock"), results)
    result = results.wait_for("lock")
    assert not result.ok
    assert "could not be sent from its worker process" in (result.error_message or "")
    executor.submit(make_job("echo", 1, key="after"), results)
    assert results.wait_for("after").ok


def test_process_handlers_may_start_processes(make_executor: MakeExecutor) -> None:
    executor = make_executor("process", concurrency=1)
    results = Results()
    job = make_job("start_a_process")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.ok, result
    assert result.output == 0


def test_process_children_end_when_the_interpreter_exits(tmp_path: Path) -> None:
    # An executor left running (children busy a moment ago) must not keep its interpreter from
    # exiting, nor leave its children behind.
    script = tmp_path / "left_running.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, queue
            import _exec_handlers as handlers
            from pgflow.executors import ProcessExecutor

            if __name__ == "__main__":
                executor = ProcessExecutor(concurrency=2, resolve_step=handlers.resolve_step)
                executor.start()
                results = queue.Queue()
                executor.submit(handlers.make_job("echo", 1), results.put)
                assert results.get(timeout=30).ok
                print(" ".join(str(p.pid) for p in multiprocessing.active_children()))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(handlers.__file__).parent)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), "the children to be gone")


def test_process_needs_a_flow_reference(make_executor: MakeExecutor) -> None:
    executor = make_executor("process", concurrency=1)
    results = Results()
    job = make_job("echo", 1, flow_ref=None)
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.error_type == "ExecutorError"
    assert "flow reference" in (result.error_message or "")


def test_process_bad_flow_reference_fails_the_job(make_executor: MakeExecutor) -> None:
    executor = make_executor("process", concurrency=1)
    results = Results()
    job = make_job("echo", 1, flow_ref="no_such_module_here:flow")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert result.error_type == "FlowLoadError"
    assert "no_such_module_here" in (result.error_message or "")


def test_process_run_headers_loader_failure_is_reported(make_executor: MakeExecutor) -> None:
    def load(run_id: str) -> Mapping[str, str]:
        raise RuntimeError("database is down")

    executor = make_executor("process", concurrency=1, load_run_headers=load)
    results = Results()
    job = make_job("read_run_headers")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert not result.ok
    assert (
        f"the headers of run {job.run_id} could not be fetched: RuntimeError: database is down"
        in (result.error_message or "")
    )
    executor.submit(make_job("echo", 1, key="after"), results)
    assert results.wait_for("after").ok


def test_process_flow_input_loader_failure_is_reported(make_executor: MakeExecutor) -> None:
    def load(run_id: str) -> Any:
        raise RuntimeError("database is down")

    executor = make_executor("process", concurrency=1, load_flow_input=load)
    results = Results()
    job = make_job("read_flow_input")
    executor.submit(job, results)
    result = results.wait_for(job.key)
    assert not result.ok
    assert "could not be fetched: RuntimeError: database is down" in (result.error_message or "")
    executor.submit(make_job("echo", 1, key="after"), results)
    assert results.wait_for("after").ok


# -- the example executor of docs/plugins.md --------------------------------------------------------


def documented_executor() -> type[Executor]:
    """The example executor of docs/plugins.md ("A small but complete executor"), run as it is
    written, so the documented interface stays one that works."""
    text = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    _, _, after = text.partition("A small but complete executor")
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    executor: type[Executor] = namespace["ThreadPerJobExecutor"]
    return executor


def test_the_documented_executor_gives_handlers_their_run_headers() -> None:
    factory = documented_executor()
    executor = factory(
        concurrency=2,
        resolve_step=handlers.resolve_step,
        load_flow_input=lambda run_id: {"input_of": run_id},
        load_run_headers=lambda run_id: {"pgflow-schedule": "nightly"},
    )
    executor.start()
    try:
        results = Results()
        for step in ("read_flow_input", "read_run_headers"):
            executor.submit(make_job(step, key=step), results)
        flow_input = results.wait_for("read_flow_input")
        headers = results.wait_for("read_run_headers")
    finally:
        assert executor.shutdown(grace=10) == []
    assert flow_input.ok and headers.ok, (flow_input, headers)
    assert flow_input.output == [{"input_of": make_job("echo").run_id}] * 2
    assert headers.output["schedule"] == "nightly"
    assert headers.output["headers"] == {"pgflow-schedule": "nightly"}
