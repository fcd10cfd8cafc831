"""Scenarios and drivers for tests/integration/test_batch_equivalence.py.

A scenario is a random flow (2 to 7 steps), one to three run inputs, and a script that decides the
outcome of every task attempt from (step_slug, task_index, attempt) alone, so that two drivers
running the same scenario see the same outcomes whatever else differs between them.

Two drivers run a scenario, each in a flow of its own (same shape, different slug) in the same
database:

- ``PerTaskDriver`` claims with ``pgmq.read`` + ``pgflow.start_tasks`` and reports with one
  ``pgflow.complete_task`` / ``pgflow.fail_task`` call per result;
- ``BatchedDriver`` claims with ``pgflow.claim_tasks`` (rebuilding each handler input from the
  task and blob rows, as a worker does) and reports with ``pgflow.report_tasks`` in batches that
  also carry duplicate, late and foreign results.

Tasks are named by a logical key (run ordinal, step slug, task index), because the two flows have
different run ids. ``snapshot`` reads back the final state of a driver's runs keyed the same way,
with timestamps reduced to "set or not", so the two snapshots can be compared with ``==``.
"""

from __future__ import annotations

import datetime
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract_helpers import (
    Conn,
    Row,
    Step,
    define_flow,
    jsonb,
    one,
    queue_table,
    rows,
    scalar,
)
from hypothesis import strategies as st
from psycopg import sql

# ---------------------------------------------------------------------------------------------
# Scenarios

MODES = ("fail", "skip", "skip-cascade")
# outputs and array elements: objects that conditions can match, and values of every JSON type
JSON_POOL: tuple[Any, ...] = ({"k": 0}, {"k": 1}, {"k": 1, "z": "a"}, 0, "x", None, [1], {})
OBJECT_INPUTS: tuple[Any, ...] = ({"k": 0}, {"k": 1}, {"k": 1, "z": "a"}, {})
# what a single step feeding a map sometimes produces instead of an array
NON_ARRAYS: tuple[Any, ...] = ({"k": 1}, 3, "x", None, True)
# patterns of dependent steps are {dep_slug: value}; arrays match map outputs by containment
DEP_PATTERN_VALUES: tuple[Any, ...] = ({"k": 0}, {"k": 1}, [{"k": 1}], [])
MAX_ARRAY = 4
PHANTOM_INDEX = MAX_ARRAY + 3  # a task index that no generated map reaches
# what BatchedDriver.noise_item adds to batches, duplicates twice as often as the others
NOISE_KINDS = ("duplicate", "duplicate", "unknown", "decoy", "phantom")
ATTEMPTS = (1, 2, 3)


@dataclass(frozen=True)
class StepSpec:
    slug: str
    deps: tuple[str, ...]
    step_type: str
    max_attempts: int | None
    when_unmet: str
    when_exhausted: str
    required: Any = None
    forbidden: Any = None

    def as_step(self) -> Step:
        return Step(
            self.slug,
            self.deps,
            step_type=self.step_type,
            max_attempts=self.max_attempts,
            when_unmet=self.when_unmet,
            when_exhausted=self.when_exhausted,
            required=self.required,
            forbidden=self.forbidden,
        )


@dataclass(frozen=True)
class StepScript:
    """Attempts listed in ``failures`` as (task_index, attempt) fail; the others succeed.

    A single step's output is ``values[attempt - 1]``; a map task's output also depends on its
    index, so that a map's aggregated output shows whether its elements kept their places.
    """

    failures: frozenset[tuple[int, int]]
    values: tuple[Any, Any, Any]


@dataclass(frozen=True)
class Outcome:
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A flow (steps, flow-wide max_attempts; base_delay is always 0), one run per input, and
    the outcome script. The rest only shapes the traffic: order_seed seeds the shared report
    order and each driver's own choices; claim_max bounds the size of one claim; batch_max that
    of one report_tasks batch (before noise); noise is the chance of a noise item before each
    result; inline_limit is how claim_tasks is called: "default", "zero" (inline_array_limit 0:
    elements of parent arrays cut out) or "mixed" (either, per call)."""

    steps: tuple[StepSpec, ...]
    max_attempts: int
    inputs: tuple[Any, ...]
    scripts: tuple[tuple[str, StepScript], ...]
    order_seed: int
    claim_max: int
    batch_max: int
    noise: float
    inline_limit: str

    def outcome(self, step_slug: str, task_index: int, attempt: int) -> Outcome:
        script = dict(self.scripts)[step_slug]
        if (task_index, attempt) in script.failures:
            return Outcome(error=f"boom {step_slug}[{task_index}] attempt {attempt}")
        step = next(s for s in self.steps if s.slug == step_slug)
        shift = task_index if step.step_type == "map" else 0
        return Outcome(output=script.values[(attempt - 1 + shift) % len(script.values)])


def _pattern(draw: st.DrawFn, deps: Sequence[str]) -> Any:
    if not deps:
        return {"k": draw(st.sampled_from((0, 1)))}
    return {draw(st.sampled_from(deps)): draw(st.sampled_from(DEP_PATTERN_VALUES))}


@st.composite
def step_specs(draw: st.DrawFn) -> tuple[StepSpec, ...]:
    specs: list[StepSpec] = []
    for number in range(draw(st.integers(2, 7))):
        earlier = [spec.slug for spec in specs]
        step_type = draw(st.sampled_from(("single", "map")))
        deps: tuple[str, ...]
        if step_type == "map":
            # a map over an earlier step's array twice as often as a root map over the input
            over_dep = bool(earlier) and draw(st.integers(0, 2)) > 0
            deps = (draw(st.sampled_from(earlier)),) if over_dep else ()
        elif earlier:
            chosen = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3))
            deps = tuple(sorted(chosen))
        else:
            deps = ()
        required = forbidden = None
        # conditions mostly on dependent steps: those resolve in the middle of a batch, where a
        # failing one must stop the run's later results; a root step's resolves at the start
        if draw(st.integers(0, 2 if deps else 5)) == 0:
            which = draw(st.sampled_from(("required", "forbidden", "both")))
            if which in ("required", "both"):
                required = _pattern(draw, deps)
            if which in ("forbidden", "both"):
                forbidden = _pattern(draw, deps)
        specs.append(
            StepSpec(
                slug=f"s{number}",
                deps=deps,
                step_type=step_type,
                max_attempts=draw(st.one_of(st.none(), st.integers(1, 3))),
                when_unmet=draw(st.sampled_from(("fail", *MODES))),
                when_exhausted=draw(st.sampled_from(MODES)),
                required=required,
                forbidden=forbidden,
            )
        )
    return tuple(specs)


def feeds_a_map(steps: Sequence[StepSpec], slug: str) -> bool:
    """A single step whose output a map step maps over (it must produce an array)."""
    return any(s.step_type == "map" and s.deps == (slug,) for s in steps)


def json_arrays() -> st.SearchStrategy[list[Any]]:
    """Arrays for maps to map over: empty ones, and often long enough (3 or more) that a map's
    tasks can finish in one batch while others of the same step are still running."""
    elements = st.sampled_from(JSON_POOL)
    return st.one_of(
        st.lists(elements, max_size=MAX_ARRAY), st.lists(elements, min_size=3, max_size=MAX_ARRAY)
    )


def _step_script(draw: st.DrawFn, step: StepSpec, steps: Sequence[StepSpec]) -> StepScript:
    # task 0 (every single step's only task) and first attempts more often than the others
    attempt_keys = st.tuples(
        st.one_of(st.just(0), st.integers(0, MAX_ARRAY)), st.sampled_from((1, *ATTEMPTS))
    )
    # half of the steps never fail, so that runs often get far enough to complete steps in bulk
    failures = draw(st.one_of(st.just(frozenset()), st.frozensets(attempt_keys, max_size=4)))
    if step.step_type == "single" and feeds_a_map(steps, step.slug):
        arrays = json_arrays()
        # mostly arrays; now and then another type, which is a type violation
        value = st.one_of(arrays, arrays, arrays, st.sampled_from(NON_ARRAYS))
    else:
        value = st.sampled_from(JSON_POOL)
    return StepScript(failures, (draw(value), draw(value), draw(value)))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps = draw(step_specs())
    has_root_map = any(s.step_type == "map" and not s.deps for s in steps)
    # a flow with a root map must get an array
    flow_input = json_arrays() if has_root_map else st.sampled_from(OBJECT_INPUTS)
    return Scenario(
        steps=steps,
        max_attempts=draw(st.integers(1, 3)),
        inputs=tuple(draw(st.lists(flow_input, min_size=1, max_size=3))),
        scripts=tuple((s.slug, _step_script(draw, s, steps)) for s in steps),
        order_seed=draw(st.integers(0, 2**32 - 1)),
        claim_max=draw(st.integers(1, 8)),
        # 64: the whole round in one batch, where one result can change what the next one means
        batch_max=draw(st.sampled_from((64, 1, 2, 3, 5))),
        noise=draw(st.sampled_from((0.0, 0.2, 0.5))),
        inline_limit=draw(st.sampled_from(("default", "zero", "mixed"))),
    )


# ---------------------------------------------------------------------------------------------
# Claimed tasks and the handler input they carry

Key = tuple[int, str, int]  # (run ordinal, step slug, task index)


@dataclass(frozen=True)
class Claimed:
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    attempt: int
    input: Any
    flow_input: Any


@dataclass
class DecodedClaim:
    tasks: list[Claimed]
    blob_repeats: list[tuple[str, str]] = field(default_factory=list)


def decode_claim_rows(found: Sequence[Row]) -> DecodedClaim:
    """Rebuild handler inputs from one claim_tasks result, the way a worker does.

    The result is checked as it is read: a task row naming a blob that the same call did not
    send is an error (the worker could not build that input).
    """
    blobs: dict[tuple[str, str], Any] = {}
    repeats: list[tuple[str, str]] = []
    for row in found:
        if row["kind"] == "blob":
            blob_key = (row["run_id"], row["step_slug"])
            if blob_key in blobs:
                repeats.append(blob_key)
            blobs[blob_key] = None if row["payload"] is None else json.loads(row["payload"])
        else:
            assert row["kind"] == "task", f"unknown claim_tasks row kind {row['kind']!r}"

    def blob(run_id: str, slug: str) -> Any:
        assert (run_id, slug) in blobs, f"claim_tasks sent no blob for run {run_id} step {slug!r}"
        return blobs[(run_id, slug)]

    tasks: list[Claimed] = []
    for row in found:
        if row["kind"] != "task":
            continue
        run_id, deps, mode = row["run_id"], list(row["deps"]), row["mode"]
        flow_input: Any = None
        if mode == 0:
            handler_input: Any = {}
            flow_input = blob(run_id, "")
        elif mode == 1:
            handler_input = {d: blobs[(run_id, d)] for d in deps if (run_id, d) in blobs}
        elif mode == 2:
            array = blob(run_id, deps[0] if deps else "")
            assert isinstance(array, list), f"mode 2 source is not an array: {array!r}"
            index = row["task_index"]
            handler_input = array[index] if index < len(array) else None
        elif mode == 3:
            handler_input = json.loads(row["payload"])
        else:
            raise AssertionError(f"unknown claim_tasks mode {mode!r} in {row!r}")
        tasks.append(
            Claimed(
                uuid.UUID(run_id),
                row["step_slug"],
                row["task_index"],
                row["attempt"],
                handler_input,
                flow_input,
            )
        )
    return DecodedClaim(tasks, repeats)


# ---------------------------------------------------------------------------------------------
# Plain calls, shared by the drivers and the hand-written examples

ReportItem = tuple[uuid.UUID, str, int, Outcome]


def claim_tasks(
    conn: Conn, flow_slug: str, worker_id: uuid.UUID, qty: int, inline_array_limit: int | None
) -> list[Row]:
    if inline_array_limit is None:
        return rows(
            conn, "select * from pgflow.claim_tasks(%s, %s, %s)", (flow_slug, worker_id, qty)
        )
    return rows(
        conn,
        "select * from pgflow.claim_tasks(%s, %s, %s, inline_array_limit => %s)",
        (flow_slug, worker_id, qty, inline_array_limit),
    )


def report_tasks(
    conn: Conn,
    items: Sequence[ReportItem],
    *,
    omit_errors: bool = False,
    omit_outputs: bool = False,
) -> int:
    """One report_tasks call. ``omit_errors`` passes error_messages as NULL (all completions);
    ``omit_outputs`` passes outputs as NULL (all failures)."""
    if omit_errors:
        assert all(item[3].error is None for item in items), "only completions may omit errors"
    if omit_outputs:
        assert all(item[3].error is not None for item in items), "only failures may omit outputs"
    outputs = None if omit_outputs else jsonb([item[3].output for item in items])
    errors = None if omit_errors else [item[3].error for item in items]
    applied = scalar(
        conn,
        "select pgflow.report_tasks(%s::uuid[], %s::text[], %s::int[], %s::jsonb, %s::text[])",
        (
            [item[0] for item in items],
            [item[1] for item in items],
            [item[2] for item in items],
            outputs,
            errors,
        ),
    )
    assert isinstance(applied, int), f"report_tasks should return an int, got {applied!r}"
    return applied


def report_one(conn: Conn, run_id: uuid.UUID, step_slug: str, index: int, outcome: Outcome) -> bool:
    """complete_task or fail_task; true when the call took effect (returned its task)."""
    if outcome.error is None:
        found = rows(
            conn,
            "select * from pgflow.complete_task(%s, %s, %s, %s)",
            (run_id, step_slug, index, jsonb(outcome.output)),
        )
    else:
        found = rows(
            conn,
            "select * from pgflow.fail_task(%s, %s, %s, %s)",
            (run_id, step_slug, index, outcome.error),
        )
    return bool(found)


def register_worker(conn: Conn, flow_slug: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    conn.execute("select pgflow.register_worker(%s, %s, 'test')", (worker_id, flow_slug))
    return worker_id


def visible_messages(conn: Conn, flow_slug: str) -> int:
    query = sql.SQL("select count(*) from {} where vt <= clock_timestamp()").format(
        queue_table(flow_slug)
    )
    return int(scalar(conn, query))


def message_counts(conn: Conn, flow_slug: str) -> tuple[int, int]:
    """(messages still in the queue, messages archived)."""
    queued = scalar(conn, sql.SQL("select count(*) from {}").format(queue_table(flow_slug)))
    archived = scalar(conn, sql.SQL("select count(*) from {}").format(queue_table(flow_slug, "a")))
    return int(queued), int(archived)


# ---------------------------------------------------------------------------------------------
# Drivers


class Driver:
    """Runs a scenario in its own flow; subclasses decide how tasks are claimed and reported."""

    def __init__(self, conn: Conn, flow_slug: str, scenario: Scenario, rng_salt: int) -> None:
        self.conn = conn
        self.flow_slug = flow_slug
        self.scenario = scenario
        # claim sizes, batch groupings and noise are the driver's own business
        self.rng = random.Random(scenario.order_seed * 7 + rng_salt)
        self.run_ids: list[uuid.UUID] = []
        self.ordinal: dict[uuid.UUID, int] = {}
        self.decoy_run_id: uuid.UUID | None = None
        self.worker_id = uuid.uuid4()

    def setup(self) -> None:
        define_flow(
            self.conn,
            self.flow_slug,
            [spec.as_step() for spec in self.scenario.steps],
            max_attempts=self.scenario.max_attempts,
            base_delay=0,
        )
        self.worker_id = register_worker(self.conn, self.flow_slug)
        # a run cancelled at once: its tasks are a source of foreign results for the batches
        decoy = one(
            self.conn,
            "select * from pgflow.start_flow(%s, %s)",
            (self.flow_slug, jsonb(self.scenario.inputs[0])),
        )
        self.decoy_run_id = decoy["run_id"]
        self.conn.execute("select pgflow.cancel_run(%s)", (self.decoy_run_id,))
        for number, flow_input in enumerate(self.scenario.inputs):
            run = one(
                self.conn,
                "select * from pgflow.start_flow(%s, %s)",
                (self.flow_slug, jsonb(flow_input)),
            )
            self.run_ids.append(run["run_id"])
            self.ordinal[run["run_id"]] = number

    def key(self, run_id: uuid.UUID, step_slug: str, task_index: int) -> Key:
        return (self.ordinal[run_id], step_slug, task_index)

    def claim_round(self) -> dict[Key, Claimed]:
        """Claim every visible task, in chunks of random size."""
        claimed: dict[Key, Claimed] = {}
        for _ in range(1000):
            if visible_messages(self.conn, self.flow_slug) == 0:
                return claimed
            for task in self.claim_chunk(self.rng.randint(1, self.scenario.claim_max)):
                key = self.key(task.run_id, task.step_slug, task.task_index)
                assert key not in claimed, f"{key} claimed twice in one round"
                claimed[key] = task
        raise AssertionError(f"flow {self.flow_slug}: messages stay visible after 1000 claims")

    def claim_chunk(self, qty: int) -> list[Claimed]:
        raise NotImplementedError

    def report_round(self, sequence: Sequence[tuple[Key, Outcome]]) -> int:
        """Report the round's results; returns how many took effect."""
        raise NotImplementedError

    def runs_finished(self) -> bool:
        statuses = rows(
            self.conn, "select status from pgflow.runs where run_id = any(%s)", (self.run_ids,)
        )
        return all(row["status"] != "started" for row in statuses)


class PerTaskDriver(Driver):
    def claim_chunk(self, qty: int) -> list[Claimed]:
        messages = rows(self.conn, "select * from pgmq.read(%s, 30, %s)", (self.flow_slug, qty))
        if not messages:
            return []
        records = rows(
            self.conn,
            "select * from pgflow.start_tasks(%s, %s::bigint[], %s)",
            (self.flow_slug, [m["msg_id"] for m in messages], self.worker_id),
        )
        attempts = {
            (row["run_id"], row["step_slug"], row["task_index"]): row["attempts_count"]
            for row in rows(
                self.conn,
                "select run_id, step_slug, task_index, attempts_count from pgflow.step_tasks"
                " where message_id = any(%s) and flow_slug = %s",
                ([m["msg_id"] for m in messages], self.flow_slug),
            )
        }
        return [
            Claimed(
                r["run_id"],
                r["step_slug"],
                r["task_index"],
                attempts[(r["run_id"], r["step_slug"], r["task_index"])],
                r["input"],
                r["flow_input"],
            )
            for r in records
        ]

    def report_round(self, sequence: Sequence[tuple[Key, Outcome]]) -> int:
        applied = 0
        for (ordinal, step_slug, index), outcome in sequence:
            applied += report_one(self.conn, self.run_ids[ordinal], step_slug, index, outcome)
        return applied


class BatchedDriver(Driver):
    def __init__(self, conn: Conn, flow_slug: str, scenario: Scenario, rng_salt: int) -> None:
        super().__init__(conn, flow_slug, scenario, rng_salt)
        self.reported: set[Key] = set()
        self.round_keys: set[Key] = set()
        self.blob_repeats: list[tuple[str, str]] = []
        self.noise_sent: Counter[str] = Counter()

    def claim_chunk(self, qty: int) -> list[Claimed]:
        mode = self.scenario.inline_limit
        if mode == "mixed":
            mode = self.rng.choice(("default", "zero"))
        limit = 0 if mode == "zero" else None
        decoded = decode_claim_rows(
            claim_tasks(self.conn, self.flow_slug, self.worker_id, qty, limit)
        )
        self.blob_repeats.extend(decoded.blob_repeats)
        return decoded.tasks

    def report_round(self, sequence: Sequence[tuple[Key, Outcome]]) -> int:
        ordered = interleave_runs(sequence, self.rng)
        in_flight = {key for key, _ in ordered}
        self.round_keys = set(in_flight)
        applied = 0
        position = 0
        while position < len(ordered):
            size = self.rng.randint(1, self.scenario.batch_max)
            items: list[ReportItem] = []
            for key, outcome in ordered[position : position + size]:
                while self.rng.random() < self.scenario.noise:
                    items.append(self.noise_item(in_flight))
                items.append((self.run_ids[key[0]], key[1], key[2], outcome))
                in_flight.discard(key)
                self.reported.add(key)
            if self.rng.random() < self.scenario.noise:
                items.append(self.noise_item(in_flight))
            position += size
            applied += self.send(items)
        return applied

    def noise_item(self, in_flight: set[Key]) -> ReportItem:
        """A result that must change nothing: for a task that is not running now (already
        reported, perhaps in this very batch), for an unknown run, for the cancelled run, or for
        a task that a live run does not have."""
        outcome = self.rng.choice((Outcome(output={"late": True}), Outcome(error="late error")))
        safe = sorted(self.reported - in_flight)
        kind = self.rng.choice(NOISE_KINDS)
        if kind == "duplicate" and not safe:
            kind = "unknown"
        if kind == "decoy" and self.decoy_run_id is None:
            kind = "unknown"
        self.noise_sent[kind] += 1
        step_slug = self.rng.choice([s.slug for s in self.scenario.steps])
        if kind == "duplicate":
            ordinal, step_slug, index = self.rng.choice(safe)
            return (self.run_ids[ordinal], step_slug, index, outcome)
        if kind == "phantom":
            # a live run and, mostly, a step running now, but a task that does not exist
            ordinal, slug, _ = self.rng.choice(sorted(self.round_keys))
            slug = self.rng.choice((slug, slug, "no_such_step"))
            return (self.run_ids[ordinal], slug, PHANTOM_INDEX, outcome)
        if kind == "decoy" and self.decoy_run_id is not None:
            return (self.decoy_run_id, step_slug, 0, outcome)
        return (uuid.UUID(int=self.rng.getrandbits(128)), step_slug, 0, outcome)

    def send(self, items: Sequence[ReportItem]) -> int:
        all_completions = all(item[3].error is None for item in items)
        all_failures = all(item[3].error is not None for item in items)
        return report_tasks(
            self.conn,
            items,
            omit_errors=all_completions and self.rng.random() < 0.5,
            omit_outputs=all_failures and self.rng.random() < 0.5,
        )


def interleave_runs(
    sequence: Sequence[tuple[Key, Outcome]], rng: random.Random
) -> list[tuple[Key, Outcome]]:
    """A random merge of the per-run subsequences: each run keeps its own order."""
    per_run: dict[int, list[tuple[Key, Outcome]]] = {}
    for item in sequence:
        per_run.setdefault(item[0][0], []).append(item)
    queues = [list(reversed(items)) for _, items in sorted(per_run.items())]
    merged: list[tuple[Key, Outcome]] = []
    while queues:
        chosen = rng.randrange(len(queues))
        merged.append(queues[chosen].pop())
        if not queues[chosen]:
            queues.pop(chosen)
    return merged


# ---------------------------------------------------------------------------------------------
# Final state


def _normalize(row: Mapping[str, Any], drop: Iterable[str]) -> dict[str, Any]:
    """A row without identities that differ between the flows; timestamps become set-or-not."""
    dropped = set(drop)
    result: dict[str, Any] = {}
    for name, value in row.items():
        if name in dropped:
            continue
        # a timestamp, or the id of the path's own worker: only whether it is set can agree
        if isinstance(value, datetime.datetime) or name.endswith("_at") or name == "last_worker_id":
            result[name] = value is not None
        else:
            result[name] = value
    return result


def _step_noise(state: Row, identities: Sequence[str]) -> list[str]:
    """Columns of a step state that carry no meaning, besides the identities.

    A skipped step's dependency counter is a leftover that nothing reads again, and it depends
    on order even between per-task calls: when one result of a batch skips a step and another
    completes one of its dependencies, the step keeps one dependency more if the skip came
    first. report_tasks counts a batch's completions before it resolves conditions.
    """
    if state["status"] == "skipped":
        return [*identities, "remaining_deps"]
    return list(identities)


def snapshot(driver: Driver) -> dict[str, dict[Any, dict[str, Any]]]:
    conn, run_ids = driver.conn, driver.run_ids
    identities = ("flow_slug", "run_id", "message_id")
    runs = rows(conn, "select * from pgflow.runs where run_id = any(%s)", (run_ids,))
    states = rows(conn, "select * from pgflow.step_states where run_id = any(%s)", (run_ids,))
    tasks = rows(conn, "select * from pgflow.step_tasks where run_id = any(%s)", (run_ids,))
    return {
        "runs": {driver.ordinal[r["run_id"]]: _normalize(r, identities) for r in runs},
        "steps": {
            (driver.ordinal[s["run_id"]], s["step_slug"]): _normalize(s, _step_noise(s, identities))
            for s in states
        },
        "tasks": {
            (driver.ordinal[t["run_id"]], t["step_slug"], t["task_index"]): _normalize(
                t, identities
            )
            for t in tasks
        },
    }


def differences(
    per_task: Mapping[str, Mapping[Any, Mapping[str, Any]]],
    batched: Mapping[str, Mapping[Any, Mapping[str, Any]]],
) -> list[str]:
    """Readable differences between two snapshots, field by field."""
    found: list[str] = []
    for table in per_task:
        left, right = per_task[table], batched[table]
        for key in sorted(set(left) | set(right), key=repr):
            if key not in left or key not in right:
                found.append(f"{table} {key}: only in {'batched' if key in right else 'per-task'}")
                continue
            for name in sorted(set(left[key]) | set(right[key])):
                a, b = left[key].get(name), right[key].get(name)
                if a != b:
                    found.append(f"{table} {key} {name}: per-task {a!r}, batched {b!r}")
    return found
