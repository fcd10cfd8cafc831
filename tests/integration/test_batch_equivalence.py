"""Contract section 9: the batched worker calls have the semantics of the per-task ones.

``pgflow.claim_tasks`` must hand out the same tasks, attempts and handler inputs as
``pgmq.read`` + ``pgflow.start_tasks``, and ``pgflow.report_tasks`` must leave the same state as
``pgflow.complete_task`` / ``pgflow.fail_task`` called once per result in the same order, with
late, duplicate and foreign results inside a batch ignored one by one without spoiling the rest.

The property test drives one random scenario (see batch_model.py) through both paths in lockstep,
round by round, each path in a flow of its own with the same shape:

1. each path claims every visible task, in chunks of its own random sizes (the batched path with
   inline_array_limit at its default, at 0, or mixed, so parent arrays come as blobs or as cut
   out elements). The rounds must claim the same tasks, attempts and handler inputs;
2. the round's results are put in one random order that both paths share; the per-task path
   reports them one call at a time, the batched path merges the runs' subsequences in another
   random interleaving (each run keeps the shared order), cuts them into batches of random
   sizes and adds noise: results already reported (in an earlier batch or earlier in the same
   batch), results for an unknown run, for a run that was cancelled, and for tasks that a live
   run does not have (no such index, no such step). The number of
   results that took effect must agree.

Why one shared per-run order rather than two independent ones: the final state of a run does
depend on the order in which its results arrive once the run can fail, because failing a run
cancels the tasks still open and stops their retries (which tasks were open, how many attempts
each had used, which step failed first and with which message all depend on the order). With the
same per-run order every one of those is determined, so the test compares the complete final
state, field by field: runs (status, output, error, counters, which timestamps are set), step
states (status, output, skip_reason, error, counters) and tasks (status, attempts, output,
error). Comparing only order-independent fields of independently ordered paths would let a wrong
cancellation or a lost retry pass unseen. Interleaving between runs still differs between the
paths, since runs do not affect one another.

Retries use base_delay 0, so a failed attempt is visible again in the next round.

100 examples take about 15 s. The mistakes that need one result of a batch to change the fate of
a later one of the same run (a condition or type violation failing the run mid-batch, an
exhausted task, a step completed early) show up in only some of the random examples, so each of
those paths also has a hand-written example below, which fails on the first run when it breaks.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from typing import Any

import pytest
from batch_model import (
    BatchedDriver,
    Claimed,
    Key,
    Outcome,
    PerTaskDriver,
    Scenario,
    claim_tasks,
    decode_claim_rows,
    differences,
    message_counts,
    register_worker,
    report_tasks,
    scenarios,
    snapshot,
)
from contract_helpers import (
    Conn,
    Step,
    define_flow,
    get_run,
    map_step,
    single,
    start_flow,
    step_state,
    task,
    tasks,
)
from hypothesis import HealthCheck, event, given, settings

MAX_ROUNDS = 60
_flow_numbers = itertools.count()


def _claimed_view(claimed: dict[Key, Claimed]) -> dict[Key, tuple[int, Any, Any]]:
    return {key: (c.attempt, c.input, c.flow_input) for key, c in claimed.items()}


def run_both_paths(conn: Conn, scenario: Scenario) -> tuple[PerTaskDriver, BatchedDriver]:
    number = next(_flow_numbers)
    per_task = PerTaskDriver(conn, f"eq_single_{number}", scenario, rng_salt=1)
    batched = BatchedDriver(conn, f"eq_batch_{number}", scenario, rng_salt=2)
    per_task.setup()
    batched.setup()
    shared_order = random.Random(scenario.order_seed)
    for round_number in range(MAX_ROUNDS):
        claimed_one = per_task.claim_round()
        claimed_many = batched.claim_round()
        assert _claimed_view(claimed_many) == _claimed_view(claimed_one), (
            f"round {round_number}: claim_tasks handed out other tasks or inputs than"
            f" pgmq.read + start_tasks\n per-task: {_claimed_view(claimed_one)}\n"
            f" batched:  {_claimed_view(claimed_many)}"
        )
        if not claimed_one:
            break
        keys = sorted(claimed_one)
        shared_order.shuffle(keys)
        sequence = [
            (key, scenario.outcome(key[1], key[2], claimed_one[key].attempt)) for key in keys
        ]
        applied_one = per_task.report_round(sequence)
        applied_many = batched.report_round(sequence)
        assert applied_many == applied_one, (
            f"round {round_number}: report_tasks says {applied_many} results took effect,"
            f" the per-task calls {applied_one}"
        )
    else:
        raise AssertionError(f"tasks were still being claimed after {MAX_ROUNDS} rounds")
    return per_task, batched


def _record_coverage(state: dict[str, dict[Any, dict[str, Any]]], batched: BatchedDriver) -> None:
    """What the example exercised, for --hypothesis-show-statistics."""
    for run in state["runs"].values():
        event(f"run {run['status']}")
    for step in state["steps"].values():
        event(f"step {step['status']} {step['skip_reason'] or ''}".strip())
        if step["error_message"] == "Condition not met":
            event("condition failed a run")
    for found in state["tasks"].values():
        event(f"task {found['status']}")
        if found["attempts_count"] > 1:
            event("task retried")
        if (found["error_message"] or "").startswith("[TYPE_VIOLATION]"):
            event("type violation")
    for kind in batched.noise_sent:
        event(f"noise in batches: {kind}")


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(scenario=scenarios())
def test_batched_calls_match_per_task_calls(conn: Conn, scenario: Scenario) -> None:
    per_task, batched = run_both_paths(conn, scenario)
    final_one, final_many = snapshot(per_task), snapshot(batched)
    _record_coverage(final_one, batched)

    assert per_task.runs_finished(), "every run should end (per-task path)"
    assert batched.runs_finished(), "every run should end (batched path)"
    found = differences(final_one, final_many)
    assert not found, "final states differ:\n" + "\n".join(found)
    queued_one, archived_one = message_counts(conn, per_task.flow_slug)
    queued_many, archived_many = message_counts(conn, batched.flow_slug)
    assert (queued_one, queued_many) == (0, 0), "every message should be archived at the end"
    assert archived_many == archived_one
    assert not batched.blob_repeats, (
        f"claim_tasks sent a blob more than once in one call: {batched.blob_repeats}"
    )


# ---------------------------------------------------------------------------------------------
# Hand-written examples


def _claim_all(conn: Conn, flow_slug: str, worker: uuid.UUID) -> list[Claimed]:
    found = claim_tasks(conn, flow_slug, worker, 100, None)
    return sorted(
        decode_claim_rows(found).tasks, key=lambda c: (str(c.run_id), c.step_slug, c.task_index)
    )


def _ok(output: Any) -> Outcome:
    return Outcome(output=output)


def _fail(message: str) -> Outcome:
    return Outcome(error=message)


def test_mixed_batch_of_completions_and_failures(conn: Conn) -> None:
    define_flow(conn, "mixed", [map_step("each")], max_attempts=2, base_delay=0)
    worker = register_worker(conn, "mixed")
    run_id = start_flow(conn, "mixed", [10, 20, 30, 40])["run_id"]
    assert [c.input for c in _claim_all(conn, "mixed", worker)] == [10, 20, 30, 40]

    applied = report_tasks(
        conn,
        [
            (run_id, "each", 0, _ok("a")),
            (run_id, "each", 1, _fail("e1")),
            (run_id, "each", 2, _ok("c")),
            (run_id, "each", 3, _fail("e3")),
        ],
    )
    assert applied == 4
    found = {t["task_index"]: t for t in tasks(conn, run_id, "each")}
    assert [(found[i]["status"], found[i]["attempts_count"]) for i in range(4)] == [
        ("completed", 1),
        ("queued", 1),
        ("completed", 1),
        ("queued", 1),
    ]
    assert (found[0]["output"], found[2]["output"]) == ("a", "c")
    assert (found[1]["error_message"], found[3]["error_message"]) == ("e1", "e3")
    state = step_state(conn, run_id, "each")
    assert (state["status"], state["remaining_tasks"]) == ("started", 2)

    retried = _claim_all(conn, "mixed", worker)
    assert [(c.task_index, c.attempt, c.input) for c in retried] == [(1, 2, 20), (3, 2, 40)]
    assert report_tasks(conn, [(run_id, "each", 3, _ok("d")), (run_id, "each", 1, _ok("b"))]) == 2
    assert step_state(conn, run_id, "each")["output"] == ["a", "b", "c", "d"]
    assert get_run(conn, run_id)["status"] == "completed"


def test_duplicates_inside_one_batch_are_ignored(conn: Conn) -> None:
    define_flow(conn, "dups", [map_step("each")], max_attempts=2, base_delay=0)
    worker = register_worker(conn, "dups")
    run_id = start_flow(conn, "dups", [1, 2, 3])["run_id"]
    _claim_all(conn, "dups", worker)

    applied = report_tasks(
        conn,
        [
            (run_id, "each", 0, _ok("first")),
            (run_id, "each", 0, _ok("second")),
            (run_id, "each", 0, _fail("late failure")),
            (run_id, "each", 1, _ok("b")),
        ],
    )
    assert applied == 2
    first = task(conn, run_id, "each", 0)
    assert (first["status"], first["output"], first["error_message"]) == (
        "completed",
        "first",
        None,
    )
    assert task(conn, run_id, "each", 1)["status"] == "completed"
    assert step_state(conn, run_id, "each")["remaining_tasks"] == 1

    # the step's last task, reported twice: the first report completes the step, the second
    # (with another output) must not replace the step's output
    assert report_tasks(conn, [(run_id, "each", 2, _ok("c")), (run_id, "each", 2, _ok("c2"))]) == 1
    assert step_state(conn, run_id, "each")["output"] == ["first", "b", "c"]
    assert get_run(conn, run_id)["output"] == {"each": ["first", "b", "c"]}
    # and a late copy in a later batch changes nothing either
    assert report_tasks(conn, [(run_id, "each", 0, _fail("too late"))]) == 0
    assert task(conn, run_id, "each", 0)["status"] == "completed"


def test_foreign_results_are_ignored_without_spoiling_the_batch(conn: Conn) -> None:
    define_flow(conn, "foreign", [map_step("each")], base_delay=0)
    worker = register_worker(conn, "foreign")
    run_id = start_flow(conn, "foreign", [1, 2])["run_id"]
    _claim_all(conn, "foreign", worker)
    unknown = uuid.uuid4()

    applied = report_tasks(
        conn,
        [
            (unknown, "each", 0, _ok("nobody's")),
            (run_id, "each", 0, _ok("a")),
            (unknown, "each", 1, _fail("nobody's failure")),
            (run_id, "each", 99, _ok("no such task")),
            (run_id, "no_such_step", 0, _fail("no such step")),
            (run_id, "each", 1, _ok("b")),
        ],
    )
    assert applied == 2
    assert step_state(conn, run_id, "each")["output"] == ["a", "b"]
    assert get_run(conn, run_id)["status"] == "completed"
    assert [t["task_index"] for t in tasks(conn, run_id)] == [0, 1]


def test_results_for_a_cancelled_run_are_ignored(conn: Conn) -> None:
    define_flow(conn, "cancelled", [map_step("each")], max_attempts=1, base_delay=0)
    worker = register_worker(conn, "cancelled")
    cancelled = start_flow(conn, "cancelled", [1, 2])["run_id"]
    failing = start_flow(conn, "cancelled", [1, 2, 3])["run_id"]
    healthy = start_flow(conn, "cancelled", [1, 2])["run_id"]
    assert len(_claim_all(conn, "cancelled", worker)) == 7
    conn.execute("select pgflow.cancel_run(%s)", (cancelled,))

    applied = report_tasks(
        conn,
        [
            (cancelled, "each", 0, _ok("too late")),
            (healthy, "each", 0, _ok("a")),
            # exhausts its only attempt: the run fails inside the batch and cancels task 1 ...
            (failing, "each", 0, _fail("boom")),
            (cancelled, "each", 1, _fail("too late")),
            # ... so its result, later in the same batch, is ignored
            (failing, "each", 1, _ok("after the failure")),
            (healthy, "each", 1, _ok("b")),
        ],
    )
    assert applied == 3
    assert [t["status"] for t in tasks(conn, cancelled)] == ["cancelled", "cancelled"]
    assert all(t["output"] is None for t in tasks(conn, cancelled))
    assert step_state(conn, cancelled, "each")["status"] == "started"
    assert get_run(conn, cancelled)["status"] == "cancelled"
    assert [t["status"] for t in tasks(conn, failing)] == ["failed", "cancelled", "cancelled"]
    assert get_run(conn, failing)["status"] == "failed"
    assert get_run(conn, healthy)["output"] == {"each": ["a", "b"]}


@pytest.mark.parametrize("gate_type", ["single", "map"])
def test_condition_that_fails_the_run_inside_a_batch_stops_later_results(
    conn: Conn, gate_type: str
) -> None:
    gate = single("gate") if gate_type == "single" else map_step("gate")
    define_flow(
        conn,
        "gated",
        [
            gate,
            map_step("each"),
            single("check", "gate", required={"gate": {"ok": True}}, when_unmet="fail"),
        ],
        base_delay=0,
    )
    worker = register_worker(conn, "gated")
    run_id = start_flow(conn, "gated", [1, 2, 3])["run_id"]
    gate_tasks = 1 if gate_type == "single" else 3
    assert len(_claim_all(conn, "gated", worker)) == 3 + gate_tasks

    applied = report_tasks(
        conn,
        [
            (run_id, "each", 0, _ok("before")),
            # the last of these completes gate; check is then ready and its condition fails the
            # run ...
            *[(run_id, "gate", index, _ok({"ok": False})) for index in range(gate_tasks)],
            # ... so these come too late
            (run_id, "each", 1, _ok("after")),
            (run_id, "each", 2, _ok("after")),
        ],
    )
    assert applied == 1 + gate_tasks
    assert get_run(conn, run_id)["status"] == "failed"
    assert step_state(conn, run_id, "gate")["status"] == "completed"
    check = step_state(conn, run_id, "check")
    assert (check["status"], check["error_message"]) == ("failed", "Condition not met")
    assert [t["status"] for t in tasks(conn, run_id, "each")] == [
        "completed",
        "cancelled",
        "cancelled",
    ]


def test_type_violation_inside_a_batch_fails_the_run_and_stops_later_results(conn: Conn) -> None:
    define_flow(
        conn,
        "violation",
        [single("list"), map_step("each", "list"), map_step("other")],
        base_delay=0,
    )
    worker = register_worker(conn, "violation")
    run_id = start_flow(conn, "violation", [1, 2, 3])["run_id"]
    assert len(_claim_all(conn, "violation", worker)) == 4

    applied = report_tasks(
        conn,
        [
            (run_id, "other", 0, _ok("before")),
            # a map maps over list's output, which is not an array: the run fails at once ...
            (run_id, "list", 0, _ok({"not": "an array"})),
            # ... so this comes too late
            (run_id, "other", 1, _ok("after")),
        ],
    )
    assert applied == 2
    failed = task(conn, run_id, "list")
    assert (failed["status"], failed["error_message"]) == (
        "failed",
        "[TYPE_VIOLATION] Produced object instead of array",
    )
    assert get_run(conn, run_id)["status"] == "failed"
    assert step_state(conn, run_id, "each")["status"] == "created"
    assert [t["status"] for t in tasks(conn, run_id, "other")] == [
        "completed",
        "cancelled",
        "cancelled",
    ]


def test_batch_that_completes_a_map_starts_its_dependents(conn: Conn) -> None:
    define_flow(
        conn,
        "fan_in",
        [map_step("each"), single("total", "each"), map_step("again", "each")],
        base_delay=0,
    )
    worker = register_worker(conn, "fan_in")
    run_id = start_flow(conn, "fan_in", [1, 2, 3])["run_id"]
    _claim_all(conn, "fan_in", worker)
    assert step_state(conn, run_id, "total")["status"] == "created"

    # reported last-first: the aggregated output must still follow task_index
    applied = report_tasks(
        conn,
        [
            (run_id, "each", 2, _ok("c")),
            (run_id, "each", 1, _ok("b")),
            (run_id, "each", 0, _ok("a")),
        ],
    )
    assert applied == 3
    assert step_state(conn, run_id, "each")["output"] == ["a", "b", "c"]
    total = step_state(conn, run_id, "total")
    again = step_state(conn, run_id, "again")
    assert (total["status"], total["remaining_tasks"]) == ("started", 1)
    assert (again["status"], again["initial_tasks"], again["remaining_tasks"]) == ("started", 3, 3)

    rows_found = claim_tasks(conn, "fan_in", worker, 100, None)
    modes = {
        (r["step_slug"], r["task_index"]): (r["mode"], r["deps"])
        for r in rows_found
        if r["kind"] == "task"
    }
    assert modes == {
        ("total", 0): (1, ["each"]),
        ("again", 0): (2, ["each"]),
        ("again", 1): (2, ["each"]),
        ("again", 2): (2, ["each"]),
    }
    inputs = {(c.step_slug, c.task_index): c.input for c in decode_claim_rows(rows_found).tasks}
    assert inputs == {
        ("total", 0): {"each": ["a", "b", "c"]},
        ("again", 0): "a",
        ("again", 1): "b",
        ("again", 2): "c",
    }


def _list_then_map(conn: Conn, flow_slug: str) -> tuple[uuid.UUID, uuid.UUID]:
    define_flow(
        conn, flow_slug, [single("list"), map_step("each", "list")], max_attempts=2, base_delay=0
    )
    worker = register_worker(conn, flow_slug)
    run_id = start_flow(conn, flow_slug, {})["run_id"]
    [root] = _claim_all(conn, flow_slug, worker)
    assert (root.step_slug, root.input, root.flow_input) == ("list", {}, {})
    assert report_tasks(conn, [(run_id, "list", 0, _ok(["p", {"q": 1}, None]))]) == 1
    return run_id, worker


def test_claim_cuts_elements_out_of_a_parent_array_over_the_limit(conn: Conn) -> None:
    run_id, worker = _list_then_map(conn, "large")
    found = claim_tasks(conn, "large", worker, 100, 0)
    assert [r["kind"] for r in found] == ["task", "task", "task"], (
        "over the limit, the parent array must not be sent as a blob"
    )
    assert [(r["task_index"], r["mode"], r["payload"]) for r in found] == [
        (0, 3, '"p"'),
        (1, 3, '{"q": 1}'),
        (2, 3, "null"),
    ]
    assert all(r["run_id"] == str(run_id) and r["deps"] == ["list"] for r in found)
    assert [c.input for c in decode_claim_rows(found).tasks] == ["p", {"q": 1}, None]


def test_claim_sends_a_small_parent_array_once_as_a_blob(conn: Conn) -> None:
    run_id, worker = _list_then_map(conn, "small")
    found = claim_tasks(conn, "small", worker, 100, None)
    task_rows = [r for r in found if r["kind"] == "task"]
    blob_rows = [r for r in found if r["kind"] == "blob"]
    assert [(r["task_index"], r["mode"], r["payload"]) for r in task_rows] == [
        (0, 2, None),
        (1, 2, None),
        (2, 2, None),
    ]
    assert [(r["run_id"], r["step_slug"]) for r in blob_rows] == [(str(run_id), "list")]
    assert json.loads(blob_rows[0]["payload"]) == ["p", {"q": 1}, None]
    assert [c.input for c in decode_claim_rows(found).tasks] == ["p", {"q": 1}, None]


@pytest.mark.parametrize("second_child", ["single", "map"])
def test_claim_sends_each_blob_once_per_call(conn: Conn, second_child: str) -> None:
    steps = [map_step("s1"), map_step("s2", "s1"), Step("s3", ("s1",), step_type=second_child)]
    define_flow(conn, "once", steps, base_delay=0)
    worker = register_worker(conn, "once")
    run_id = start_flow(conn, "once", ["x"])["run_id"]
    _claim_all(conn, "once", worker)
    assert report_tasks(conn, [(run_id, "s1", 0, _ok("y"))]) == 1

    found = claim_tasks(conn, "once", worker, 10, None)
    assert sorted(r["step_slug"] for r in found if r["kind"] == "task") == ["s2", "s3"]
    blobs = [(r["run_id"], r["step_slug"]) for r in found if r["kind"] == "blob"]
    assert blobs == [(str(run_id), "s1")], f"each blob once per call, got {blobs}"


def test_result_for_a_task_the_run_does_not_have_is_ignored(conn: Conn) -> None:
    define_flow(conn, "phantom", [map_step("each")], base_delay=0)
    worker = register_worker(conn, "phantom")
    run_id = start_flow(conn, "phantom", [1, 2, 3])["run_id"]
    _claim_all(conn, "phantom", worker)

    applied = report_tasks(
        conn, [(run_id, "each", 0, _ok("a")), (run_id, "each", 99, _ok("no such task"))]
    )
    assert applied == 1
    assert step_state(conn, run_id, "each")["remaining_tasks"] == 2
    assert report_tasks(conn, [(run_id, "each", 1, _ok("b"))]) == 1
    state = step_state(conn, run_id, "each")
    assert (state["status"], state["remaining_tasks"]) == ("started", 1), (
        "the step must wait for task 2, which is still running"
    )
