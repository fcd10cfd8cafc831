"""The worker end to end: real Postgres, every executor, the batched and the per-task path.

Each test starts a `Worker` in a thread on a fresh database, starts runs with `Client`, waits for
them and checks outputs, step statuses and error messages exactly. The flows live in
worker_flows.py (the process executor imports them by "module:attribute").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import worker_flows as flows
from worker_helpers import (
    ALL_MODES,
    BATCHED,
    STOP_TIMEOUT,
    Mode,
    completed_output,
    modes,
    pid_alive,
    running_worker,
    start_worker,
    statuses,
    step_of,
    task_of,
    wait_until,
)

from pgflow.client import Client, RunFailed
from pgflow.errors import InputValidationError

# Which executor runs a handler does not depend on the claim/report path, so most scenarios take
# the per-task path on one executor only; the chain, retries and context ones take every pair.
CORE_MODES = (*BATCHED, Mode("thread", per_task=True))

# -- shapes of a DAG -----------------------------------------------------------------------------


@modes(*ALL_MODES)
def test_sequential_chain(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.chain], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.chain, {"word": "go"})

    assert completed_output(run) == {"third": {"text": "go-1-2-3", "saw": ["second"]}}
    assert statuses(run) == {"first": "completed", "second": "completed", "third": "completed"}
    assert [step_of(run, slug).output for slug in ("first", "second")] == ["go-1", "go-1-2"]
    assert (worker.worker.stats.completed, worker.worker.stats.failed) == (3, 0)


@modes(*CORE_MODES)
def test_diamond(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.diamond], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.diamond, {"n": 4})

    assert completed_output(run) == {"bottom": {"sum": 45, "deps": {"left": 5, "right": 40}}}
    assert set(statuses(run).values()) == {"completed"}
    assert step_of(run, "bottom").dependencies == ("left", "right")


@modes(*CORE_MODES)
def test_root_map_keeps_element_order(db_dsn: str, mode: Mode) -> None:
    items = [5, 3, 8, 1, 9, 2, 7]  # more elements than any worker's batch
    with running_worker([flows.root_map], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.root_map, items)

    assert completed_output(run) == {"collect": [10, 6, 16, 2, 18, 4, 14]}
    double = step_of(run, "double")
    assert double.initial_tasks == len(items)
    assert double.output == [{"index": i, "doubled": 2 * x} for i, x in enumerate(items)]
    assert [(t.task_index, t.status, t.attempts_count) for t in double.tasks] == [
        (i, "completed", 1) for i in range(len(items))
    ]


@modes(*CORE_MODES)
def test_map_over_a_steps_array(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.map_over_step], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.map_over_step, {"numbers": [1, 2, 3, 4]})

    assert completed_output(run) == {"total": {"squares": [1, 4, 9, 16], "total": 30}}
    square = step_of(run, "square")
    assert (square.initial_tasks, square.output) == (4, [1, 4, 9, 16])
    assert [t.status for t in square.tasks] == ["completed"] * 4


@modes(*CORE_MODES)
def test_empty_maps_complete_without_tasks(db_dsn: str, mode: Mode) -> None:
    served = [flows.nested_maps, flows.map_over_step]
    with running_worker(served, db_dsn, mode) as worker, Client(db_dsn) as client:
        # [] -> map -> map -> single: both maps complete at once with [], the single step runs
        empty = worker.run_flow(client, flows.nested_maps, [])
        # the child of a step that returned []
        empty_child = worker.run_flow(client, flows.map_over_step, {"numbers": []})
        # the same nested flow with elements, to show the empty case is not vacuous
        full = worker.run_flow(client, flows.nested_maps, [1, 2])

    assert completed_output(empty) == {"after_maps": {"inner": [], "count": 0}}
    for slug in ("outer", "inner"):
        step = step_of(empty, slug)
        assert (step.status, step.initial_tasks, step.output, step.tasks) == (
            "completed",
            0,
            [],
            (),
        )

    assert completed_output(empty_child) == {"total": {"squares": [], "total": 0}}
    square = step_of(empty_child, "square")
    assert (square.status, square.initial_tasks, square.output, square.tasks) == (
        "completed",
        0,
        [],
        (),
    )

    assert completed_output(full) == {"after_maps": {"inner": [4, 6], "count": 2}}


# -- conditions ----------------------------------------------------------------------------------


@modes(*CORE_MODES)
def test_conditions_skip_skip_cascade_and_fail(db_dsn: str, mode: Mode) -> None:
    served = [flows.conditions, flows.strict_gate]
    with running_worker(served, db_dsn, mode) as worker, Client(db_dsn) as client:
        unmet_id = client.start(flows.conditions, {"healthy": False, "quiet": True})
        met_id = client.start(flows.conditions, {"healthy": True, "quiet": False})
        refused_id = client.start(flows.strict_gate, {"allowed": False})
        allowed_id = client.start(flows.strict_gate, {"allowed": True})
        unmet, met, refused, allowed = (
            worker.finish(client, run_id) for run_id in (unmet_id, met_id, refused_id, allowed_id)
        )

    # skip: announce runs without deploy's key; skip-cascade: notify_log goes with notify
    assert completed_output(unmet) == {"announce": {"saw": []}}
    assert statuses(unmet) == {
        "check": "completed",
        "deploy": "skipped:condition_unmet",
        "announce": "completed",
        "notify": "skipped:condition_unmet",
        "notify_log": "skipped:dependency_skipped",
    }

    assert completed_output(met) == {
        "announce": {"saw": ["deploy"]},
        "notify_log": {"saw": ["notify"]},
    }
    assert set(statuses(met).values()) == {"completed"}

    assert refused.status == "failed"
    assert refused.error_message == "Condition not met"
    assert statuses(refused) == {"probe": "completed", "guarded": "failed"}
    assert step_of(refused, "guarded").error_message == "Condition not met"
    assert step_of(refused, "guarded").tasks == ()

    assert completed_output(allowed) == {"guarded": "ran"}


# -- retries and exhausted attempts --------------------------------------------------------------


@modes(*ALL_MODES)
def test_retries_until_success(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.retries], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.retries, {})

    # flaky fails attempts 1 and 2 and returns [3, 4] on attempt 3; wobbly's odd element fails
    # its first attempt
    assert completed_output(run) == {
        "wobbly": [{"item": 3, "attempt": 2}, {"item": 4, "attempt": 1}]
    }
    flaky = task_of(run, "flaky")
    assert (flaky.status, flaky.attempts_count) == ("completed", 3)
    assert [(t.status, t.attempts_count) for t in step_of(run, "wobbly").tasks] == [
        ("completed", 2),
        ("completed", 1),
    ]
    assert (worker.worker.stats.completed, worker.worker.stats.failed) == (3, 3)


@modes(*CORE_MODES)
def test_exhausted_attempts_in_each_mode(db_dsn: str, mode: Mode) -> None:
    served = [flows.exhaust_fail, flows.exhaust_skip, flows.exhaust_skip_cascade]
    with running_worker(served, db_dsn, mode) as worker, Client(db_dsn) as client:
        started = {flow.slug: client.start(flow, {"n": 7}) for flow in served}
        failed, skipped, cascaded = (worker.finish(client, run_id) for run_id in started.values())
        with pytest.raises(RunFailed) as caught:
            client.wait(failed.run_id, timeout=5)

    error = "ValueError: bad value 7 on attempt 2"
    assert caught.value.error == error
    assert failed.status == "failed"
    assert failed.error_message == error
    doomed = step_of(failed, "doomed")
    assert (doomed.status, doomed.error_message) == ("failed", error)
    task = task_of(failed, "doomed")
    assert (task.status, task.attempts_count, task.error_message) == ("failed", 2, error)
    assert step_of(failed, "downstream").status == "created"

    assert completed_output(skipped) == {"downstream": {"saw": []}, "bystander": "fine"}
    assert statuses(skipped) == {
        "doomed": "skipped:handler_failed",
        "downstream": "completed",
        "bystander": "completed",
    }
    task = task_of(skipped, "doomed")
    assert (task.status, task.attempts_count, task.error_message) == ("failed", 2, error)

    assert completed_output(cascaded) == {"bystander": "fine"}
    assert statuses(cascaded) == {
        "doomed": "skipped:handler_failed",
        "downstream": "skipped:dependency_skipped",
        "bystander": "completed",
    }


@modes(*CORE_MODES)
def test_a_non_array_feeding_a_map_fails_the_run(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.map_over_step], db_dsn, mode) as worker, Client(db_dsn) as client:
        as_object = worker.run_flow(client, flows.map_over_step, {"numbers": {"not": "a list"}})
        as_number = worker.run_flow(client, flows.map_over_step, {"numbers": 5})

    for run, json_type in ((as_object, "object"), (as_number, "number")):
        error = f"[TYPE_VIOLATION] Produced {json_type} instead of array"
        assert run.status == "failed"
        assert run.error_message == error
        assert statuses(run) == {"numbers": "failed", "square": "created", "total": "created"}
        task = task_of(run, "numbers")
        # no retry, although the flow allows 3 attempts
        assert (task.status, task.attempts_count, task.error_message) == ("failed", 1, error)


# -- handlers: typed inputs, async, bad outputs, context -----------------------------------------


@modes(*CORE_MODES)
def test_typed_handlers(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.typed], db_dsn, mode) as worker, Client(db_dsn) as client:
        good = worker.run_flow(client, flows.typed, {"sku": "A1", "quantity": 3})
        # by slug: Client.start would check these inputs itself, given the Flow
        bad_inputs = ({"sku": "A1", "quantity": "three"}, {"sku": "A1"})
        wrong_type, missing = (
            worker.finish(client, client.start(flows.typed.slug, bad)) for bad in bad_inputs
        )

    # a Struct output is stored as a JSON object
    assert completed_output(good) == {"confirm": {"receipt": {"sku": "A1", "total_cents": 750}}}
    assert step_of(good, "price").output == {"sku": "A1", "total_cents": 750}

    prefix = (
        "InputValidationError: step 'price' of flow 'wt_typed': the input does not match `Order`: "
    )
    for run, reason in (
        (wrong_type, "Expected `int`, got `str` - at `$.quantity`"),
        (missing, "Object missing required field `quantity`"),
    ):
        assert run.status == "failed"
        assert run.error_message == prefix + reason
        assert statuses(run) == {"price": "failed", "confirm": "created"}
        # given the Flow, Client.start refuses the input before the run exists, in the same words
        with Client(db_dsn) as client, pytest.raises(InputValidationError) as refused:
            client.start(flows.typed, run.input)
        assert f"InputValidationError: {refused.value}" == run.error_message


# Where each executor runs an `async def` handler.
_ASYNC_THREADS = {"asyncio": "pgflow-asyncio", "inline": "test-worker"}


@modes(*BATCHED, Mode("asyncio", per_task=True))
def test_async_handlers(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.async_flow], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.async_flow, {"items": ["a", "b", "c"]})

    summary = completed_output(run)["summarize"]
    assert (summary["items"], summary["indexes"]) == (["a", "b", "c"], [0, 1, 2])
    if mode.executor == "asyncio":
        # awaited on the executor's own loop; the sync step ran off the loop, in a thread
        assert summary["async_threads"] == ["pgflow-asyncio"]
        assert summary["sync_thread"].startswith("pgflow-asyncio-sync")
    elif mode.executor == "inline":
        # run to completion right in the worker's loop thread
        assert summary["async_threads"] == ["test-worker"]
        assert summary["sync_thread"] == "test-worker"


@modes(*CORE_MODES)
def test_outputs_without_a_json_form_fail_the_task_not_the_worker(db_dsn: str, mode: Mode) -> None:
    with running_worker([flows.bad_output], db_dsn, mode) as worker, Client(db_dsn) as client:
        runs = {
            kind: worker.run_flow(client, flows.bad_output, {"kind": kind})
            for kind in ("nan", "object", "function", "set")
        }
        # the worker is still serving
        after = worker.run_flow(client, flows.bad_output, {"kind": "fine"})
        worker.check_alive()

    assert completed_output(after) == {"produce": {"ok": "fine"}}

    for kind in ("object", "function"):
        run = runs[kind]
        assert run.status == "failed", kind
        assert statuses(run) == {"produce": "failed"}
        assert task_of(run, "produce").error_message == run.error_message

    # JSON has no NaN: msgspec writes it as null, as JSON libraries do
    assert completed_output(runs["nan"]) == {"produce": {"score": None}}

    opaque = runs["object"].error_message or ""
    assert opaque.startswith(
        "OutputNotJSON: the output of step 'produce' cannot be stored as JSON: "
    ), opaque
    assert "Opaque" in opaque, opaque

    function = runs["function"].error_message or ""
    if mode.executor == "process":
        # the child cannot even send a function back
        assert "the handler's output could not be sent from its worker process" in function
        assert "lambda" in function, function
    else:
        assert function.startswith(
            "OutputNotJSON: the output of step 'produce' cannot be stored as JSON: "
        ), function
        assert "function" in function, function

    # msgspec gives a set a JSON form (an array), so it is accepted
    assert completed_output(runs["set"]) == {"produce": {"tags": ["only"]}}


@modes(*ALL_MODES)
def test_context_fields(db_dsn: str, mode: Mode) -> None:
    run_input = {"letters": ["x", "y"], "tag": "probe"}
    with running_worker([flows.ctx_probe], db_dsn, mode) as worker, Client(db_dsn) as client:
        run_id = client.start(flows.ctx_probe, run_input)
        run = worker.finish(client, run_id)

    def fields(step_slug: str, task_index: int = 0) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "flow_slug": "wt_ctx_probe",
            "step_slug": step_slug,
            "task_index": task_index,
            "attempt": 1,
        }

    assert completed_output(run) == {
        "origin": {**fields("origin"), "value": run_input, "flow_input": run_input},
        "report": {
            **fields("report"),
            "flow_input": run_input,
            "visits": [
                {**fields("visit", 0), "item": "x", "flow_input": run_input},
                {**fields("visit", 1), "item": "y", "flow_input": run_input},
            ],
        },
    }


# -- timeouts ------------------------------------------------------------------------------------

TIMEOUT_ERROR = "TimeoutError: the handler exceeded its timeout of 1s"


@modes(*BATCHED)
def test_a_handler_past_its_timeout_fails_its_attempt(
    db_dsn: str, mode: Mode, tmp_path: Path
) -> None:
    pid_file = tmp_path / "dawdle.pid"
    served = [flows.slow, flows.quick]
    with running_worker(served, db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.slow, {"pid_file": str(pid_file)})
        handler_pid = int(pid_file.read_text())
        if mode.executor == "process":
            assert handler_pid != os.getpid()
            # children serve job after job; this one ending means it was terminated
            wait_until(lambda: not pid_alive(handler_pid), f"process {handler_pid} to end")
        else:
            assert handler_pid == os.getpid()
        # the slot is free again (on the process executor: a new child took over)
        after = worker.run_flow(client, flows.quick, "after")
        attempts = client.attempts(run.run_id)

    assert run.status == "failed"
    assert run.error_message == TIMEOUT_ERROR
    task = task_of(run, "dawdle")
    assert (task.status, task.attempts_count, task.error_message) == ("failed", 1, TIMEOUT_ERROR)
    assert [(a.step_slug, a.attempt, a.outcome, a.error_message) for a in attempts] == [
        ("dawdle", 1, "timed_out", TIMEOUT_ERROR)
    ]
    assert attempts[0].traceback is None  # the handler did not raise: nothing to show
    assert completed_output(after) == {"ping": {"pong": "after"}}


@modes(Mode("asyncio"))
def test_an_async_handler_past_its_timeout_is_cancelled(
    db_dsn: str, mode: Mode, tmp_path: Path
) -> None:
    marker = tmp_path / "linger.marker"
    with running_worker([flows.slow_async], db_dsn, mode) as worker, Client(db_dsn) as client:
        run = worker.run_flow(client, flows.slow_async, {"marker": str(marker)})
        wait_until(marker.exists, "the handler to write its marker")

    assert run.status == "failed"
    assert run.error_message == TIMEOUT_ERROR
    assert marker.read_text() == "cancelled"


def test_stop_after_terminating_a_child_that_waited_on_ctx_shutdown(
    db_dsn: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "dawdle.pid"
    running = start_worker([flows.slow], db_dsn, Mode("process"))
    stopped = False
    try:
        with Client(db_dsn) as client:
            run = running.run_flow(
                client, flows.slow, {"pid_file": str(pid_file), "wait_on_shutdown": True}
            )
        assert run.error_message == TIMEOUT_ERROR
        handler_pid = int(pid_file.read_text())
        wait_until(lambda: not pid_alive(handler_pid), f"process {handler_pid} to end")
    finally:
        running.worker.stop()
        stopped = running.worker.wait_stopped(STOP_TIMEOUT)
        running.thread.join(STOP_TIMEOUT)
    assert stopped, f"the worker did not stop within {STOP_TIMEOUT}s"
