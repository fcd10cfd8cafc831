"""Attacks on the SQL by logins that hold only `pgflow_worker` or only `pgflow_client`.

Each attack arms a trap that would run the attacker's code with the rights of the functions'
owner (a superuser here) if a security-definer function used an object the caller can create.
The trap raises `HIJACKED`, so a call that fell into it fails; each test first shows that the
trap is armed (it fires when the attacker uses the object directly), then that the role's
legitimate calls succeed with the trap in place.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
import pytest
from contract_helpers import Conn, install_fake_realtime, one, rows, scalar, sent_events
from psycopg import sql
from psycopg.types.json import Jsonb

WORKER_LOGIN = "pgflow_attack_worker"
CLIENT_LOGIN = "pgflow_attack_client"

# The attacker's payload: it only proves that it ran, and as whom.
TRAP_FUNCTIONS = """
create or replace function pg_temp.trap() returns trigger language plpgsql as $$
begin
  raise exception 'HIJACKED: trigger ran as %', current_user;
end $$;
create or replace function pg_temp.trap_check(value pg_catalog.text) returns pg_catalog.bool language plpgsql as $$
begin
  raise exception 'HIJACKED: domain check ran as %', current_user;
end $$;
"""

# Relations a function of ours used to keep in the session's temp schema, and table and queue
# names a function might look up without its schema. `_arm_temp_tables` adds every relation of
# schemas pgflow and pgmq as the catalog lists them, so a table added later is shadowed too.
SHADOW_TABLES = (
    "pgflow_claim",
    "pgflow_report",
    "pgflow_report_steps",
    "pgflow_new_steps",
    "flows",
    "steps",
    "deps",
    "runs",
    "step_states",
    "step_tasks",
    "workers",
    "meta",
    "q_sec_flow",
    "a_sec_flow",
)
# Built-in types a function body might name; `_arm_shadow_types` adds every built-in type the
# catalog shows in a column of pgflow or pgmq or in a signature of pgflow's functions.
SHADOW_TYPES = (
    "text",
    "jsonb",
    "uuid",
    "timestamptz",
    "numeric",
    "interval",
    "name",
    "regclass",
    "int2",
    "int4",
    "int8",
    "bool",
    "float8",
    "oid",
    "regprocedure",
    "regnamespace",
    "regrole",
    "bytea",
    "varchar",
)

# Run in the attacker's session, after its own domains may exist: every type is qualified.
CATALOG_RELATIONS = """
select distinct c.relname::pg_catalog.text as name from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname operator(pg_catalog.=) any (array['pgflow', 'pgmq']::pg_catalog.name[])
   and c.relkind operator(pg_catalog.=) any (array['r', 'p', 'v', 'm', 'S']::pg_catalog."char"[])
"""
CATALOG_TYPES = """
with used (type_oid) as (
  select a.atttypid from pg_catalog.pg_attribute a
    join pg_catalog.pg_class c on c.oid = a.attrelid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where n.nspname operator(pg_catalog.=) any (array['pgflow', 'pgmq']::pg_catalog.name[])
     and a.attnum operator(pg_catalog.>) 0
  union
  select pg_catalog.unnest(pg_catalog.array_append(
           coalesce(p.proallargtypes, p.proargtypes::pg_catalog.oid[]), p.prorettype))
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where n.nspname operator(pg_catalog.=) 'pgflow'
), base (type_oid) as (
  select case when t.typcategory operator(pg_catalog.=) 'A' then t.typelem else t.oid end
    from used join pg_catalog.pg_type t on t.oid operator(pg_catalog.=) used.type_oid
)
select distinct t.typname::pg_catalog.text as name from base
  join pg_catalog.pg_type t on t.oid operator(pg_catalog.=) base.type_oid
 where t.typnamespace operator(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
   and t.typtype operator(pg_catalog.=) 'b' and t.typcategory operator(pg_catalog.<>) 'A'
"""


def _login_dsn(conn: Conn, db_dsn: str, login: str, role: str) -> str:
    conn.execute(
        sql.SQL(
            "do $$ begin if not exists (select 1 from pg_roles where rolname = {}) "
            "then create role {} login nosuperuser; end if; end $$"
        ).format(sql.Literal(login), sql.Identifier(login))
    )
    # exactly one pgflow role, whatever an earlier test left behind
    for other in ("pgflow_worker", "pgflow_client"):
        conn.execute(
            sql.SQL("revoke {} from {}").format(sql.Identifier(other), sql.Identifier(login))
        )
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(login)))
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    params["user"] = login
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture
def worker_dsn(conn: Conn, db_dsn: str) -> str:
    return _login_dsn(conn, db_dsn, WORKER_LOGIN, "pgflow_worker")


@pytest.fixture
def client_dsn(conn: Conn, db_dsn: str) -> str:
    return _login_dsn(conn, db_dsn, CLIENT_LOGIN, "pgflow_client")


@pytest.fixture
def sec_flow(conn: Conn) -> str:
    """root map `fan` -> single `sum` -> single `tail`: claims, set-based reports, run advance."""
    conn.execute("select pgflow.create_flow('sec_flow', 1, 0, 5)")
    conn.execute("select pgflow.add_step('sec_flow', 'fan', step_type => 'map')")
    conn.execute("select pgflow.add_step('sec_flow', 'sum', array['fan'])")
    conn.execute("select pgflow.add_step('sec_flow', 'tail', array['sum'])")
    return "sec_flow"


@contextlib.contextmanager
def _connect(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as attacker:
        yield attacker


def _is_superuser(conn: Conn, login: str) -> bool:
    return bool(scalar(conn, "select rolsuper from pg_roles where rolname = %s", (login,)))


def _arm_temp_tables(attacker: Conn) -> None:
    """Temp tables with the names our functions might use, each with a trigger that fires on
    any write (statement-level triggers fire even when no row is touched)."""
    attacker.execute(TRAP_FUNCTIONS)
    names = set(SHADOW_TABLES) | {r["name"] for r in rows(attacker, CATALOG_RELATIONS)}
    for name in sorted(names):
        table = sql.Identifier(name)
        attacker.execute(
            sql.SQL(
                "create temporary table {} (a int, b int, c int, d int, e int, f int, g int, "
                "h int, i int, j int)"
            ).format(table)
        )
        attacker.execute(
            sql.SQL(
                "create trigger trap before insert or update or delete or truncate on pg_temp.{} "
                "for each statement execute function pg_temp.trap()"
            ).format(table)
        )
    # armed: a write by the attacker fires the trap
    with pytest.raises(psycopg.errors.RaiseException, match="HIJACKED"):
        attacker.execute("delete from pg_temp.pgflow_report")


def _arm_shadow_types(attacker: Conn) -> None:
    """Domains in pg_temp named like the built-in types our functions use, whose CHECK runs the
    attacker's function (an empty search_path would still resolve them first)."""
    attacker.execute(TRAP_FUNCTIONS)
    names = set(SHADOW_TYPES) | {r["name"] for r in rows(attacker, CATALOG_TYPES)}
    for name in sorted(names):
        attacker.execute(
            sql.SQL(
                "create domain pg_temp.{} as pg_catalog.{} check (pg_temp.trap_check(value::pg_catalog.text))"
            ).format(sql.Identifier(name), sql.Identifier(name))
        )
    with pytest.raises(psycopg.errors.RaiseException, match="HIJACKED"):
        attacker.execute("select 'x'::pg_temp.text")


def _run_sec_flow_as_worker(attacker: Conn, flow: str) -> uuid.UUID:
    """Everything a worker does on the batched path, through the attacker's connection."""
    worker_id = uuid.uuid4()
    attacker.execute("select pgflow.register_worker(%s, %s, 'attacker')", (worker_id, flow))
    run_id = scalar(attacker, "select run_id from pgflow.start_flow(%s, '[1, 2, 3]')", (flow,))
    for step, outputs in (("fan", [10, 20, 30]), ("sum", [60]), ("tail", ["done"])):
        claimed = rows(
            attacker,
            "select * from pgflow.claim_tasks(%s, %s, 10) where kind = 'task' order by task_index",
            (flow, worker_id),
        )
        assert [c["step_slug"] for c in claimed] == [step] * len(outputs)
        n = len(claimed)
        applied = scalar(
            attacker,
            "select pgflow.report_tasks(%s::pg_catalog.uuid[], %s::pg_catalog.text[],"
            " %s::pg_catalog.int4[], %s, null, %s::pg_catalog.int4[])",
            (
                [run_id] * n,
                [step] * n,
                [c["task_index"] for c in claimed],
                Jsonb(outputs),
                [c["attempt"] for c in claimed],
            ),
        )
        assert applied == n
    attacker.execute("select pgflow.send_heartbeat(%s)", (worker_id,))
    attacker.execute("select pgflow.requeue_stalled_tasks()")
    attacker.execute("select pgflow.mark_worker_stopped(%s)", (worker_id,))
    return run_id


def _run_per_task_as_worker(attacker: Conn, flow: str) -> uuid.UUID:
    """The contract's per-task path: read_with_poll, start_tasks, complete_task."""
    worker_id = uuid.uuid4()
    attacker.execute("select pgflow.register_worker(%s, %s, 'attacker')", (worker_id, flow))
    run_id = scalar(attacker, "select run_id from pgflow.start_flow(%s, '[5]')", (flow,))
    for output in (7, 7, "end"):
        msgs = [
            r["msg_id"]
            for r in rows(attacker, "select * from pgflow.read_with_poll(%s, 30, 10, 0)", (flow,))
        ]
        started = rows(
            attacker,
            "select * from pgflow.start_tasks(%s, %s::pg_catalog.int8[], %s)",
            (flow, msgs, worker_id),
        )
        assert len(started) == 1
        task = started[0]
        attacker.execute(
            "select pgflow.complete_task(%s, %s, %s, %s)",
            (task["run_id"], task["step_slug"], task["task_index"], Jsonb(output)),
        )
    return run_id


def _assert_completed(conn: Conn, run_id: uuid.UUID) -> None:
    run = one(conn, "select status, output from pgflow.runs where run_id = %s", (run_id,))
    assert run["status"] == "completed", run


# -- 1 and 2: objects the caller can create ------------------------------------------------------


def test_worker_temp_table_triggers_do_not_run_in_definer_functions(
    conn: Conn, worker_dsn: str, sec_flow: str
) -> None:
    with _connect(worker_dsn) as attacker:
        _arm_temp_tables(attacker)
        _assert_completed(conn, _run_sec_flow_as_worker(attacker, sec_flow))
        _assert_completed(conn, _run_per_task_as_worker(attacker, sec_flow))
    assert not _is_superuser(conn, WORKER_LOGIN)


def test_worker_temp_schema_types_do_not_shadow_builtin_types(
    conn: Conn, worker_dsn: str, sec_flow: str
) -> None:
    with _connect(worker_dsn) as attacker:
        _arm_shadow_types(attacker)
        _arm_temp_tables(attacker)
        _assert_completed(conn, _run_sec_flow_as_worker(attacker, sec_flow))
        _assert_completed(conn, _run_per_task_as_worker(attacker, sec_flow))
    assert not _is_superuser(conn, WORKER_LOGIN)


def test_client_temp_schema_domains_and_tables_do_not_hijack_client_calls(
    conn: Conn, client_dsn: str, sec_flow: str
) -> None:
    shape = scalar(conn, "select pgflow._get_flow_shape(%s)", (sec_flow,))
    with _connect(client_dsn) as attacker:
        _arm_shadow_types(attacker)
        _arm_temp_tables(attacker)
        run = scalar(attacker, "select pgflow.start_flow_with_states(%s, '[1]')", (sec_flow,))
        run_id = run["run"]["run_id"]
        assert [s["status"] for s in run["steps"]] == ["started", "created", "created"]
        again = scalar(attacker, "select pgflow.get_run_with_states(%s)", (run_id,))
        assert again["run"]["status"] == "started"
        verified = scalar(
            attacker, "select pgflow.ensure_flow_compiled(%s, %s)", (sec_flow, Jsonb(shape))
        )
        assert verified["status"] == "verified"
        compiled = scalar(
            attacker,
            "select pgflow.ensure_flow_compiled('sec_new_flow', %s)",
            (Jsonb(shape),),
        )
        assert compiled["status"] == "compiled"
        cancelled = one(attacker, "select status from pgflow.cancel_run(%s)", (run_id,))
        assert cancelled["status"] == "cancelled"
    assert not _is_superuser(conn, CLIENT_LOGIN)


def test_every_security_definer_function_pins_search_path_with_pg_temp_last(conn: Conn) -> None:
    found = rows(
        conn,
        "select p.oid::regprocedure::text as name, p.proconfig from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'pgflow' and p.prosecdef",
    )
    assert found, "expected security definer functions in schema pgflow"
    # other settings (plan_cache_mode on the hot path) may come along; search_path must be exact
    wrong = [
        f["name"]
        for f in found
        if [c for c in f["proconfig"] or [] if c.startswith("search_path=")]
        != ["search_path=pg_catalog, pg_temp"]
    ]
    assert not wrong, f"definer functions without search_path = pg_catalog, pg_temp: {wrong}"


# -- realtime.send: a function of that name is called only when a trusted role owns it -----------

# What a login with CREATE on the database can plant: if pgflow called it from a definer
# function, it would run as the owner (a superuser here) and could make the login superuser.
PLANTED_SEND = """
create function realtime.send(payload jsonb, event text, topic text, private boolean)
returns void language plpgsql as $$
begin
  raise exception 'HIJACKED: realtime.send ran as % for %', current_user, session_user;
end $$;
"""


def _plant_realtime_send(attacker: Conn) -> None:
    attacker.execute(PLANTED_SEND)
    # armed: it runs when the attacker calls it
    with pytest.raises(psycopg.errors.RaiseException, match="HIJACKED"):
        attacker.execute("select realtime.send('{}', 'e', 't', false)")


def _grant_create_on_database(conn: Conn, login: str) -> None:
    conn.execute(
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(login)
        )
    )


def _realtime_send_trusted(conn: Conn) -> bool:
    return bool(scalar(conn, "select pgflow._realtime_send_trusted()"))


def test_worker_realtime_send_in_its_own_schema_is_not_run_by_starts_or_reports(
    conn: Conn, worker_dsn: str, sec_flow: str
) -> None:
    _grant_create_on_database(conn, WORKER_LOGIN)
    conn.execute(
        sql.SQL("alter database {} set pgflow.events = 'on'").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    with _connect(worker_dsn) as attacker:
        attacker.execute("create schema realtime")
        _plant_realtime_send(attacker)
        _assert_completed(conn, _run_sec_flow_as_worker(attacker, sec_flow))
        _assert_completed(conn, _run_per_task_as_worker(attacker, sec_flow))
    assert not _is_superuser(conn, WORKER_LOGIN)
    assert not _realtime_send_trusted(conn)
    # our own events were still kept: only the call to the planted function was left out
    assert (
        scalar(conn, "select count(*) from pgflow.events where event_type = 'run:completed'") == 2
    )


def test_client_realtime_send_in_its_own_schema_is_not_run_by_client_calls(
    conn: Conn, client_dsn: str, sec_flow: str
) -> None:
    _grant_create_on_database(conn, CLIENT_LOGIN)
    with _connect(client_dsn) as attacker:
        attacker.execute("create schema realtime")
        _plant_realtime_send(attacker)
        run_id = scalar(attacker, "select run_id from pgflow.start_flow(%s, '[1]')", (sec_flow,))
        states = scalar(attacker, "select pgflow.start_flow_with_states(%s, '[2]')", (sec_flow,))
        headed = one(
            attacker,
            "select run_id from pgflow.start_flow_with_headers(%s, '[3]', '{\"h\": \"v\"}')",
            (sec_flow,),
        )
        for run in (run_id, states["run"]["run_id"], headed["run_id"]):
            assert one(attacker, "select status from pgflow.cancel_run(%s)", (run,))["status"] == (
                "cancelled"
            )
    assert not _is_superuser(conn, CLIENT_LOGIN)
    assert not _realtime_send_trusted(conn)


def test_realtime_send_a_login_adds_to_a_trusted_schema_is_not_run(
    conn: Conn, client_dsn: str, sec_flow: str
) -> None:
    """A managed setup's schema realtime, owned by the superuser, where a login may create."""
    conn.execute("create schema realtime")
    conn.execute(
        sql.SQL("grant usage, create on schema realtime to {}").format(sql.Identifier(CLIENT_LOGIN))
    )
    with _connect(client_dsn) as attacker:
        _plant_realtime_send(attacker)
        run_id = scalar(attacker, "select run_id from pgflow.start_flow(%s, '[1]')", (sec_flow,))
    assert scalar(conn, "select status from pgflow.runs where run_id = %s", (run_id,)) == "started"
    assert not _is_superuser(conn, CLIENT_LOGIN)
    assert not _realtime_send_trusted(conn)


def test_realtime_send_in_a_schema_a_login_owns_is_not_trusted(conn: Conn, client_dsn: str) -> None:
    """The schema's owner could drop and replace the function between the check and the call,
    so a superuser's function in a login's schema is not called either."""
    conn.execute(
        sql.SQL("create schema realtime authorization {}").format(sql.Identifier(CLIENT_LOGIN))
    )
    superusers_send = (
        "create function realtime.send(payload jsonb, event text, topic text, private boolean)"
        " returns void language sql as 'select'"
    )
    conn.execute(superusers_send)
    assert scalar(
        conn,
        "select pg_get_userbyid(proowner) from pg_proc"
        " where oid = 'realtime.send(jsonb,text,text,boolean)'::regprocedure",
    ) == (conn.info.user)
    assert not _realtime_send_trusted(conn)
    conn.execute(
        sql.SQL("alter schema realtime owner to {}").format(sql.Identifier(conn.info.user))
    )
    assert _realtime_send_trusted(conn)


@pytest.mark.parametrize("login_dsn", ["worker_dsn", "client_dsn"])
def test_realtime_send_owned_by_a_superuser_still_gets_the_events(
    conn: Conn, sec_flow: str, login_dsn: str, request: pytest.FixtureRequest
) -> None:
    """Supabase: realtime.send and its schema belong to supabase_admin, a superuser."""
    dsn = request.getfixturevalue(login_dsn)
    install_fake_realtime(conn)
    assert _realtime_send_trusted(conn)
    with _connect(dsn) as login:
        if login_dsn == "worker_dsn":
            run_id = _run_sec_flow_as_worker(login, sec_flow)
            _assert_completed(conn, run_id)
        else:
            run_id = scalar(login, "select run_id from pgflow.start_flow(%s, '[1]')", (sec_flow,))
    events = [e["event"] for e in sent_events(conn, run_id)]
    assert events[0] == "run:started"
    if login_dsn == "worker_dsn":
        assert "step:fan:completed" in events
        assert events[-1] == "run:completed"


# -- 3: destroying data takes the owner ----------------------------------------------------------


@pytest.mark.parametrize("login_dsn", ["worker_dsn", "client_dsn"])
def test_roles_cannot_replace_a_changed_flow_and_lose_its_runs(
    conn: Conn, sec_flow: str, login_dsn: str, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue(login_dsn)
    run_id = scalar(conn, "select run_id from pgflow.start_flow(%s, '[1]')", (sec_flow,))
    other_shape = {
        "steps": [
            {
                "slug": "only",
                "stepType": "single",
                "dependencies": [],
                "whenUnmet": "skip",
                "whenExhausted": "fail",
                "requiredInputPattern": {"defined": False},
                "forbiddenInputPattern": {"defined": False},
            }
        ]
    }
    with _connect(dsn) as attacker:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
            attacker.execute(
                "select pgflow.ensure_flow_compiled(%s, %s, allow_data_loss => true)",
                (sec_flow, Jsonb(other_shape)),
            )
        mismatch = scalar(
            attacker,
            "select pgflow.ensure_flow_compiled(%s, %s)",
            (sec_flow, Jsonb(other_shape)),
        )
        assert mismatch["status"] == "mismatch"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute("select pgflow.delete_flow_and_data(%s)", (sec_flow,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute("select pgflow.prune_data_older_than('0 seconds')")
    assert scalar(conn, "select count(*) from pgflow.runs where run_id = %s", (run_id,)) == 1
    # the owner still may
    result = scalar(
        conn,
        "select pgflow.ensure_flow_compiled(%s, %s, allow_data_loss => true)",
        (sec_flow, Jsonb(other_shape)),
    )
    assert result["status"] == "recompiled"
    assert scalar(conn, "select count(*) from pgflow.runs where run_id = %s", (run_id,)) == 0


# -- 4: pgmq's tables ------------------------------------------------------------------------------

PGMQ_WRITES = (
    "update pgmq.meta set is_unlogged = is_unlogged",
    "delete from pgmq.meta",
    "update pgmq.q_sec_flow set vt = now()",
    "delete from pgmq.q_sec_flow",
    "insert into pgmq.a_sec_flow (msg_id, message) values (1, '{}')",
    "delete from pgmq.a_sec_flow",
    "select * from pgmq.read('sec_flow', 30, 10)",
    "select pgmq.send('sec_flow', '{}')",
    "select pgmq.purge_queue('sec_flow')",
    "select pgmq.drop_queue('sec_flow')",
)


@pytest.mark.parametrize("login_dsn", ["worker_dsn", "client_dsn"])
@pytest.mark.parametrize("statement", PGMQ_WRITES)
def test_roles_cannot_touch_pgmq_tables(
    conn: Conn, sec_flow: str, login_dsn: str, statement: str, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue(login_dsn)
    scalar(conn, "select run_id from pgflow.start_flow(%s, '[1]')", (sec_flow,))
    before = scalar(conn, "select count(*) from pgmq.q_sec_flow")
    with _connect(dsn) as attacker, pytest.raises(psycopg.errors.InsufficientPrivilege):
        attacker.execute(statement)
    assert scalar(conn, "select count(*) from pgmq.q_sec_flow") == before == 1


def test_read_with_poll_reads_only_the_queues_of_flows(conn: Conn, worker_dsn: str) -> None:
    conn.execute("select pgmq.create('not_a_flow')")
    conn.execute("select pgmq.send('not_a_flow', '{\"secret\": 1}')")
    with (
        _connect(worker_dsn) as attacker,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="not the queue of a pgflow"),
    ):
        attacker.execute("select * from pgflow.read_with_poll('not_a_flow', 30, 10, 0)")


def test_public_has_no_rights_on_pgflow_or_pgmq_tables(conn: Conn) -> None:
    granted = rows(
        conn,
        "select c.oid::regclass::text as name from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname in ('pgflow', 'pgmq') and c.relkind in ('r', 'p', 'v')"
        " and (has_table_privilege('public', c.oid, 'insert')"
        "   or has_table_privilege('public', c.oid, 'update')"
        "   or has_table_privilege('public', c.oid, 'delete'))",
    )
    assert granted == []
    for role in ("pgflow_worker", "pgflow_client"):
        writable = rows(
            conn,
            "select c.oid::regclass::text as name from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname in ('pgflow', 'pgmq') and c.relkind in ('r', 'p')"
            " and (has_table_privilege(%s, c.oid, 'insert')"
            "   or has_table_privilege(%s, c.oid, 'update')"
            "   or has_table_privilege(%s, c.oid, 'delete')"
            "   or has_table_privilege(%s, c.oid, 'truncate'))",
            (role, role, role, role),
        )
        assert writable == [], f"{role} can write {writable}"


def test_listen_quotes_the_channel_as_an_identifier(db_dsn: str, conn: Conn) -> None:
    from pgflow.db.listener import ChannelListener

    channel = 'Odd "channel"; select 1'
    received: list[str] = []
    got = threading.Event()

    def on_payload(payload: str | None) -> None:
        if payload is not None:
            received.append(payload)
            got.set()

    listener = ChannelListener(db_dsn, channel, on_payload)
    listener.start()
    try:
        assert listener.wait_alive(timeout=30)
        conn.execute("select pg_notify(%s, 'hello')", (channel,))
        assert got.wait(30), "the notification on the quoted channel did not arrive"
    finally:
        listener.request_stop()
        conn.execute("select pg_notify(%s, '')", (channel,))
        listener.stop()
    assert received[0] == "hello"
