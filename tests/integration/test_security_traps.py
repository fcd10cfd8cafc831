"""Every function granted to `pgflow_worker` or `pgflow_client` is called, doing real work, by a
login holding only that role, with every trap of `test_security` armed in the login's session:
temporary tables with triggers shadowing every relation of schemas pgflow and pgmq (and the ones
our functions used to create), `pg_temp` domains shadowing the built-in types, events kept
(`pgflow.events = on`) and a trusted `realtime.send` installed, so the event paths run too.

Which functions were called is not a list kept by hand: the login's sessions count their calls
(`track_functions = 'all'` for that login in the test's database), and the test fails naming
each granted function (from `pg_proc.proacl`) that the session never called. A function granted
later fails these tests until it is exercised here.

In the attacker's session every cast is qualified with `pg_catalog.`: an unqualified `::uuid[]`
would resolve to the attacker's own `pg_temp` domain and fire its trap in its own statement,
which would look like a hijack that is not one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from contract_helpers import Conn, install_fake_realtime, one, rows, scalar, sent_events
from psycopg import sql
from psycopg.types.json import Jsonb
from test_security import (
    CLIENT_LOGIN,
    WORKER_LOGIN,
    _arm_shadow_types,
    _arm_temp_tables,
    _assert_completed,
    _is_superuser,
    _login_dsn,
    _run_per_task_as_worker,
    _run_sec_flow_as_worker,
    sec_flow,  # noqa: F401 (fixture)
)
from worker_helpers import wait_until

GRANTED = """
select p.oid::regprocedure::text as name
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
  cross join lateral aclexplode(p.proacl) a
 where n.nspname = 'pgflow' and a.privilege_type = 'EXECUTE' and a.grantee = %s::regrole
"""

CALLED = """
select p.oid::regprocedure::text as name
  from pg_stat_user_functions s
  join pg_proc p on p.oid = s.funcid
 where s.schemaname = 'pgflow' and s.calls > 0
"""


def _granted(conn: Conn, role: str) -> set[str]:
    return {r["name"] for r in rows(conn, GRANTED, (role,))}


@contextlib.contextmanager
def _trapped_session(conn: Conn, dsn: str, login: str) -> Iterator[Conn]:
    """The login's session with every trap armed and its function calls counted. The counts
    are flushed when the session's backend exits, so the block waits for that on the way out."""
    conn.execute(
        sql.SQL("alter role {} in database {} set track_functions = 'all'").format(
            sql.Identifier(login), sql.Identifier(conn.info.dbname)
        )
    )
    with psycopg.connect(dsn, autocommit=True) as attacker:
        assert scalar(attacker, "show track_functions") == "all"
        pid = scalar(attacker, "select pg_catalog.pg_backend_pid()")
        _arm_shadow_types(attacker)
        _arm_temp_tables(attacker)
        yield attacker
    wait_until(
        lambda: scalar(conn, "select count(*) from pg_stat_activity where pid = %s", (pid,)) == 0,
        f"the session of {login} to end",
    )


def _assert_every_granted_function_was_called(conn: Conn, role: str) -> None:
    granted = _granted(conn, role)
    assert granted, f"no function of schema pgflow is granted to {role}"

    def missing() -> set[str]:
        conn.execute("select pg_stat_clear_snapshot()")
        return granted - {r["name"] for r in rows(conn, CALLED)}

    # PostgreSQL 15+ flushes a session's counts as it exits; before, a collector process
    # receives them a moment later
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not missing(), f"the calls of {role}'s functions to be counted", 10)
    left = sorted(missing())
    assert not left, (
        f"functions granted to {role} that no test calls under the traps: {left}; call each "
        "(doing the work it exists for) in this file's session of that role"
    )


@pytest.fixture
def trap_flow(conn: Conn) -> str:
    """root map `fan` -> single `tail`, with retries left and no delay before a retry."""
    conn.execute("select pgflow.create_flow('trap_flow', 3, 0, 5)")
    conn.execute("select pgflow.add_step('trap_flow', 'fan', step_type => 'map')")
    conn.execute("select pgflow.add_step('trap_flow', 'tail', array['fan'])")
    return "trap_flow"


@pytest.fixture
def events_and_realtime(conn: Conn) -> None:
    """Events kept for every session opened from now on, and a realtime.send owned by the
    superuser (as Supabase's is), so that every event path runs under the traps."""
    conn.execute(
        sql.SQL("alter database {} set pgflow.events = 'on'").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    install_fake_realtime(conn)


def _claim(attacker: Conn, flow: str, worker_id: uuid.UUID) -> list[dict[str, object]]:
    return rows(
        attacker,
        "select * from pgflow.claim_tasks(%s, %s, 10) where kind = 'task'"
        " order by step_slug, task_index",
        (flow, worker_id),
    )


def _task_arrays(tasks: list[dict[str, object]]) -> tuple[list[object], ...]:
    return (
        [uuid.UUID(str(t["run_id"])) for t in tasks],
        [t["step_slug"] for t in tasks],
        [t["task_index"] for t in tasks],
        [t["attempt"] for t in tasks],
    )


TASK_ARRAYS = (
    "%s::pg_catalog.uuid[], %s::pg_catalog.text[], %s::pg_catalog.int4[], %s::pg_catalog.int4[]"
)


def _exercise_attempts(conn: Conn, attacker: Conn, flow: str, worker_id: uuid.UUID) -> None:
    """extend, fail (both forms), release, complete with an attempt, report_and_claim."""
    run = scalar(attacker, "select pgflow.start_flow_with_states(%s, '[1, 2, 3, 4]')", (flow,))
    run_id = run["run"]["run_id"]
    assert [s["status"] for s in run["steps"]] == ["started", "created"]
    assert (
        scalar(attacker, "select pgflow.get_run_with_states(%s)", (run_id,))["run"]["status"]
        == "started"
    )
    t0, t1, t2, t3 = _claim(attacker, flow, worker_id)

    extended = scalar(
        attacker,
        f"select pgflow.extend_tasks(%s, %s, {TASK_ARRAYS})",
        (flow, worker_id, *_task_arrays([t0])),
    )
    assert extended == 1
    failed = one(
        attacker,
        "select status from pgflow.fail_task(%s, %s, %s, 'boom', %s, 'now', 'Traceback: boom',"
        " 'timed_out')",
        (t0["run_id"], t0["step_slug"], t0["task_index"], t0["attempt"]),
    )
    assert failed["status"] == "queued"
    failed = one(
        attacker,
        "select status from pgflow.fail_task(%s, %s, %s, 'boom')",
        (t1["run_id"], t1["step_slug"], t1["task_index"]),
    )
    assert failed["status"] == "queued"
    released = scalar(
        attacker,
        f"select pgflow.release_tasks(%s, %s, {TASK_ARRAYS})",
        (flow, worker_id, *_task_arrays([t2])),
    )
    assert released == 1
    completed = one(
        attacker,
        "select status from pgflow.complete_task(%s, %s, %s, '40', %s)",
        (t3["run_id"], t3["step_slug"], t3["task_index"], t3["attempt"]),
    )
    assert completed["status"] == "completed"
    attempts = rows(
        conn,
        "select task_index, outcome, traceback from pgflow.task_attempts where run_id = %s"
        " order by task_index, attempt",
        (run_id,),
    )
    assert [(a["task_index"], a["outcome"]) for a in attempts] == [
        (0, "timed_out"),
        (1, "failed"),
        (3, "completed"),
    ]

    again = _claim(attacker, flow, worker_id)
    assert [(t["task_index"], t["attempt"]) for t in again] == [(0, 2), (1, 2), (2, 1)]
    runs, steps, indexes, tries = _task_arrays(again)
    next_claims = rows(
        attacker,
        "select * from pgflow.report_and_claim(%s, %s, 10, %s::pg_catalog.uuid[],"
        " %s::pg_catalog.text[], %s::pg_catalog.int4[], %s, null, %s::pg_catalog.int4[])"
        " where kind = 'task'",
        (flow, worker_id, runs, steps, indexes, Jsonb([10, 20, 30]), tries),
    )
    assert [(t["step_slug"], t["task_index"]) for t in next_claims] == [("tail", 0)]
    tail = next_claims[0]
    attacker.execute(
        "select pgflow.complete_task(%s, 'tail', 0, '\"done\"', %s)",
        (tail["run_id"], tail["attempt"]),
    )
    _assert_completed(conn, run_id)


def _exercise_event_relay(attacker: Conn) -> None:
    turn = one(attacker, "select * from pgflow.event_relay_turn('trap_relay', 'holder', 30, 0)")
    assert turn["events_on"] is True
    assert turn["last_id"] is not None, turn
    assert turn["last_assigned"] > 0
    attacker.execute("select pgflow.release_event_relay('trap_relay', 'holder', 0)")


def _exercise_worker_schedules(conn: Conn, attacker: Conn, flow: str) -> None:
    synced = scalar(
        attacker,
        "select pgflow.sync_code_schedules(%s, %s)",
        (flow, Jsonb([{"name": "every_minute", "cron": "* * * * *", "input": [1]}])),
    )
    assert synced["created"] == ["every_minute"]
    # make one tick due: counted from ten minutes ago, the next one two minutes ago
    conn.execute(
        "update pgflow.schedules set ticks_from = now() - interval '10 minutes',"
        " next_tick_at = now() - interval '2 minutes' where schedule_name = 'every_minute'"
    )
    due = rows(
        attacker,
        "select schedule_id from pgflow.claim_due_schedules(array[%s]::pg_catalog.text[], 5)",
        (flow,),
    )
    assert len(due) == 1
    now = dt.datetime.now(dt.timezone.utc)
    tick = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
    fired = rows(
        attacker,
        "select * from pgflow.fire_schedule_ticks(%s, %s::pg_catalog.timestamptz[],"
        " %s::pg_catalog.timestamptz)",
        (due[0]["schedule_id"], [tick], now + dt.timedelta(minutes=1)),
    )
    assert [f["tick_at"] for f in fired] == [tick]
    started = one(
        conn,
        "select r.status, h.headers from pgflow.runs r join pgflow.run_headers h using (run_id)"
        " where r.run_id = %s",
        (fired[0]["run_id"],),
    )
    assert started["status"] == "started"
    assert started["headers"]["pgflow-schedule"] == "every_minute"


def _exercise_shared(conn: Conn, attacker: Conn, flow: str) -> uuid.UUID:
    """What both roles may call besides start_flow: the slug check, the retry delay, compiling
    and verifying flows, and starting a run with headers. Returns that run's id."""
    assert scalar(attacker, "select pgflow.is_valid_slug('trap_flow')") is True
    assert scalar(attacker, "select pgflow.is_valid_slug('not a slug')") is False
    assert scalar(attacker, "select pgflow.calculate_retry_delay(2, 3, 10)") == 10
    shape = scalar(conn, "select pgflow._get_flow_shape(%s)", (flow,))
    verified = scalar(attacker, "select pgflow.ensure_flow_compiled(%s, %s)", (flow, Jsonb(shape)))
    assert verified["status"] == "verified"
    compiled = scalar(
        attacker, "select pgflow.ensure_flow_compiled('trap_new_flow', %s)", (Jsonb(shape),)
    )
    assert compiled["status"] == "compiled"
    headed = one(
        attacker,
        "select run_id from pgflow.start_flow_with_headers(%s, '[1]', '{\"h\": \"v\"}')",
        (flow,),
    )
    run_id = headed["run_id"]
    headers = scalar(conn, "select headers from pgflow.run_headers where run_id = %s", (run_id,))
    assert headers == {"h": "v"}
    return uuid.UUID(str(run_id))


@pytest.mark.usefixtures("events_and_realtime")
def test_worker_calls_every_granted_function_under_the_traps(
    conn: Conn,
    db_dsn: str,
    sec_flow: str,  # noqa: F811 (fixture)
    trap_flow: str,
) -> None:
    dsn = _login_dsn(conn, db_dsn, WORKER_LOGIN, "pgflow_worker")
    with _trapped_session(conn, dsn, WORKER_LOGIN) as attacker:
        headed = _exercise_shared(conn, attacker, trap_flow)
        _assert_completed(conn, _run_sec_flow_as_worker(attacker, sec_flow))
        _assert_completed(conn, _run_per_task_as_worker(attacker, sec_flow))
        worker_id = uuid.uuid4()
        attacker.execute(
            "select pgflow.register_worker(%s, %s, 'attacker')", (worker_id, trap_flow)
        )
        # the run with headers goes first in the queue: finish it, then the attempt paths
        (root,) = _claim(attacker, trap_flow, worker_id)
        assert str(root["run_id"]) == str(headed)
        attacker.execute(
            "select pgflow.complete_task(%s, 'fan', 0, '1', %s)", (headed, root["attempt"])
        )
        (tail,) = _claim(attacker, trap_flow, worker_id)
        attacker.execute(
            "select pgflow.complete_task(%s, 'tail', 0, '1', %s)", (headed, tail["attempt"])
        )
        _assert_completed(conn, headed)
        _exercise_attempts(conn, attacker, trap_flow, worker_id)
        _exercise_event_relay(attacker)
        _exercise_worker_schedules(conn, attacker, trap_flow)
        attacker.execute("select pgflow.mark_worker_stopped(%s)", (worker_id,))
    assert not _is_superuser(conn, WORKER_LOGIN)
    # the event paths ran: events were kept, and the trusted realtime.send got them
    assert (
        scalar(conn, "select count(*) from pgflow.events where event_type = 'task:retrying'") == 2
    )
    assert [e["event"] for e in sent_events(conn, headed)][-1] == "run:completed"
    _assert_every_granted_function_was_called(conn, "pgflow_worker")


@pytest.mark.usefixtures("events_and_realtime")
def test_client_calls_every_granted_function_under_the_traps(
    conn: Conn, db_dsn: str, trap_flow: str
) -> None:
    dsn = _login_dsn(conn, db_dsn, CLIENT_LOGIN, "pgflow_client")
    with _trapped_session(conn, dsn, CLIENT_LOGIN) as attacker:
        headed = _exercise_shared(conn, attacker, trap_flow)
        run_id = scalar(attacker, "select run_id from pgflow.start_flow(%s, '[1]')", (trap_flow,))
        run = scalar(attacker, "select pgflow.start_flow_with_states(%s, '[2]')", (trap_flow,))
        assert run["run"]["status"] == "started"
        again = scalar(attacker, "select pgflow.get_run_with_states(%s)", (run_id,))
        assert again["run"]["status"] == "started"
        for run_to_cancel in (run_id, run["run"]["run_id"], headed):
            cancelled = one(attacker, "select status from pgflow.cancel_run(%s)", (run_to_cancel,))
            assert cancelled["status"] == "cancelled"
        created = one(
            attacker,
            "select schedule_name, origin from pgflow.create_schedule(%s, 'nightly', '0 3 * * *',"
            " 'Europe/Paris', '[1]', 1)",
            (trap_flow,),
        )
        assert created == {"schedule_name": "nightly", "origin": "runtime"}
        paused = one(
            attacker,
            "select paused_at from pgflow.set_schedule_paused(%s, 'nightly', true)",
            (trap_flow,),
        )
        assert paused["paused_at"] is not None
        attacker.execute("select pgflow.remove_schedule(%s, 'nightly')", (trap_flow,))
    assert scalar(conn, "select count(*) from pgflow.schedules") == 0
    assert not _is_superuser(conn, CLIENT_LOGIN)
    assert [e["event"] for e in sent_events(conn, headed)] == [
        "run:started",
        "step:fan:started",
        "run:cancelled",
    ]
    assert (
        scalar(conn, "select count(*) from pgflow.events where event_type = 'run:cancelled'") == 3
    )
    _assert_every_granted_function_was_called(conn, "pgflow_client")


def test_nothing_is_granted_to_public_that_the_role_tests_would_not_see(conn: Conn) -> None:
    """The coverage above lists grants per role; a function executable by PUBLIC (every
    login) would escape it."""
    public = rows(
        conn,
        "select p.oid::regprocedure::text as name from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'pgflow' and (p.proacl is null or exists ("
        "   select from aclexplode(p.proacl) a where a.grantee = 0))",
    )
    assert public == []
