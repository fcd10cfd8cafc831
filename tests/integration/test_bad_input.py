"""Bad input fails the right thing with a message that says what to do, and loses nothing
(docs/reliability.md): outputs that cannot be stored fail their task at once, never the batch or
the worker; inputs shaped like SQL are data; a huge input is carried whole."""

from __future__ import annotations

from typing import Any

import bad_input_flows as flows
import pytest
from contract_helpers import Conn, rows
from worker_helpers import Mode, modes, start_worker

from pgflow.client import Client
from pgflow.errors import ConfigError, FlowDefinitionError
from pgflow.flow import Flow
from pgflow.worker import WorkerOptions

LIMIT = 1000


def _task(conn: Conn, run_id: str) -> dict[str, Any]:
    (task,) = rows(
        conn,
        "select status, attempts_count, error_message from pgflow.step_tasks where run_id = %s",
        (run_id,),
    )
    return task


@modes(Mode("thread"), Mode("process"), Mode("thread", per_task=True))
def test_outputs_that_cannot_be_stored_fail_their_task_at_once(
    db_dsn: str, conn: Conn, mode: Mode
) -> None:
    worker = start_worker([flows.bad_results], db_dsn, mode, max_output_bytes=LIMIT)
    try:
        with Client(db_dsn) as client:
            runs = {
                kind: client.start(flows.bad_results, {"kind": kind, "size": LIMIT * 5})
                for kind in ("big", "nul", "deep", "fine")
            }
            small = client.start(flows.bad_results, {"kind": "big", "size": LIMIT - 10})
            finished = {kind: worker.finish(client, run_id) for kind, run_id in runs.items()}
            fits = worker.finish(client, small)
    finally:
        worker.stop()
    assert {kind: run.status for kind, run in finished.items()} == {
        "big": "failed",
        "nul": "failed",
        "deep": "failed",
        "fine": "completed",
    }
    errors = {kind: _task(conn, runs[kind]) for kind in ("big", "nul", "deep")}
    for task in errors.values():
        assert (task["status"], task["attempts_count"]) == ("failed", 1)  # 5 allowed
    assert errors["big"]["error_message"].startswith(
        f"OutputTooLarge: the output of step 'produce' is {LIMIT * 5 + 2} bytes of JSON, over "
        f"the worker's limit of {LIMIT} (max_output_bytes, --max-output-bytes)"
    )
    assert errors["nul"]["error_message"].startswith("OutputNotJSON: ")
    assert "U+0000" in errors["nul"]["error_message"]
    # the process executor cannot even send it back from its child
    assert errors["deep"]["error_message"].startswith(
        ("OutputNotJSON: ", "RecursionError: the handler's output could not be sent")
    )
    assert "recursion" in errors["deep"]["error_message"]
    assert fits.status == "completed"
    assert fits.output == {"produce": "x" * (LIMIT - 10)}


@pytest.mark.parametrize("size", [0, 256 * 1024 * 1024])
def test_the_output_limit_is_checked_when_the_worker_is_made(size: int) -> None:
    with pytest.raises(ConfigError, match="max_output_bytes must be between 1 and"):
        WorkerOptions(max_output_bytes=size)


SQL_SHAPED = [
    "'); drop table pgflow.runs; --",
    '"; delete from pgflow.flows; --',
    "$$; select pg_sleep(10); $$",
    "%s %(x)s {0} \\x00",
    "Robert'); DROP TABLE students;--",
]


def test_inputs_shaped_like_sql_are_data(db_dsn: str, conn: Conn) -> None:
    payload = {"texts": SQL_SHAPED, SQL_SHAPED[0]: SQL_SHAPED[1]}
    worker = start_worker([flows.echo], db_dsn, Mode("thread"))
    try:
        with Client(db_dsn) as client:
            run = worker.finish(client, client.start(flows.echo, payload))
    finally:
        worker.stop()
    assert run.status == "completed"
    assert run.output == {"same": payload}
    assert rows(conn, "select count(*) as n from pgflow.flows where flow_slug = 'bi_echo'") == [
        {"n": 1}
    ]


def test_a_huge_input_is_carried_whole(db_dsn: str) -> None:
    payload = {"blob": "y" * (8 * 1024 * 1024), "items": list(range(50_000))}
    worker = start_worker([flows.echo], db_dsn, Mode("thread"), max_output_bytes=64 * 1024 * 1024)
    try:
        with Client(db_dsn) as client:
            run = worker.finish(client, client.start(flows.echo, payload))
    finally:
        worker.stop()
    assert run.status == "completed"
    assert run.output == {"same": payload}


@pytest.mark.parametrize(
    "slug", ["x'); drop table pgflow.runs; --", 'a"; delete from pgflow.flows']
)
def test_slugs_shaped_like_sql_are_refused_and_change_nothing(
    db_dsn: str, conn: Conn, slug: str
) -> None:
    with pytest.raises(FlowDefinitionError, match="must start with a letter or underscore"):
        Flow(slug)
    before = rows(conn, "select count(*) as n from pgflow.flows")
    with Client(db_dsn) as client, pytest.raises(ConfigError, match="does not exist"):
        client.start(slug, {})
    assert rows(conn, "select count(*) as n from pgflow.flows") == before
    assert rows(conn, "select to_regclass('pgflow.runs') is not null as runs") == [{"runs": True}]


def _deep(levels: int) -> list[Any]:
    deep: list[Any] = []
    inner = deep
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return deep


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"text": "before\x00after"}, "U+0000, which PostgreSQL's jsonb cannot store"),
        (_deep(100_000), "recursion"),
    ],
    ids=["nul", "deep"],
)
def test_a_run_input_that_cannot_be_stored_is_refused_before_anything_is_written(
    db_dsn: str, conn: Conn, payload: Any, reason: str
) -> None:
    with Client(db_dsn) as client:
        client.start(flows.echo, {"warm": "up"})  # the flow exists; one run
        with pytest.raises(ConfigError) as caught:
            client.start(flows.echo, payload)
    message = str(caught.value)
    assert message.startswith("the run input cannot be turned into JSON")
    assert reason in message
    assert rows(conn, "select count(*) as n from pgflow.runs") == [{"n": 1}]
