"""The schema files and the migrations build the same database.

`python/pgflow/db/sql/schema/` is where the SQL is read and edited, one file per object;
`python/pgflow/db/sql/migrations/` is what `pgflow db migrate` applies. Nothing else keeps them in
step: a schema file edited without a migration that makes the same change (or a migration without
the matching schema edit) fails `test_schema_files_and_migrations_build_the_same_database`, whose
message names each object that differs, how, and the schema file to look at.

The baseline migration `0001_baseline.sql` was made from the schema files before anything was
released: `cat python/pgflow/db/sql/schema/*.sql > python/pgflow/db/sql/migrations/0001_baseline.sql`.
Later changes go into new migrations, never into it.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgflow.db.migrations import SCHEMA_FILE, load_schema, migrate
from pgflow.errors import MigrationError

PROJECT = Path(__file__).resolve().parents[2]
SQL_DIR = PROJECT / "python" / "pgflow" / "db" / "sql"
SCHEMA_DIR = SQL_DIR / "schema"
MIGRATIONS_DIR = SQL_DIR / "migrations"

# Schemas whose objects are compared: every schema but the system ones, so that grants (or any
# other change) a migration makes outside pgflow, on pgmq say, are compared too.
USER_SCHEMA = "n.nspname <> 'information_schema' and n.nspname !~ '^pg_'"

SCHEMA_SIDE = "schema files"
MIGRATIONS_SIDE = "migrations"


# --- the file names ----------------------------------------------------------------------------


def test_schema_file_names_follow_the_naming_rule() -> None:
    names = sorted(p.name for p in SCHEMA_DIR.glob("*.sql"))
    assert names, f"no schema files in {SCHEMA_DIR}"
    bad = [n for n in names if SCHEMA_FILE.match(n) is None]
    assert not bad, (
        f"schema files named against the rule NNNN_<kind>_<name>.sql (or NNNN_roles.sql, "
        f"NNNN_grants.sql): {bad}"
    )
    shared = {number: count for number, count in Counter(n[:4] for n in names).items() if count > 1}
    assert not shared, f"schema file numbers used more than once: {shared}"
    assert [name for name, _ in load_schema()] == names


# Statements that create a named object of schema pgflow, at the start of a line (function
# bodies are indented, so statements they run are not taken for the file's own).
CREATE = (
    re.compile(
        r"^create\s+(?:or\s+replace\s+)?(?:unlogged\s+)?(?P<kind>function|procedure|table|type"
        r"|view|materialized\s+view|sequence)\s+(?:if\s+not\s+exists\s+)?pgflow\.(?P<name>\w+)",
        re.MULTILINE | re.IGNORECASE,
    ),
    re.compile(
        r"^create\s+(?:or\s+replace\s+)?(?:unique\s+)?(?:constraint\s+)?(?P<kind>index|trigger)\b"
        r"[^;]*?\son\s+(?:only\s+)?pgflow\.(?P<name>\w+)",
        re.MULTILINE | re.IGNORECASE,
    ),
)
_HOME_KIND = {
    "function": "function",
    "procedure": "function",
    "table": "table",
    "index": "table",
    "type": "type",
    "view": "view",
    "materialized view": "view",
    "sequence": "sequence",
    "trigger": "table",
}


def test_each_object_is_created_in_its_own_file() -> None:
    """What a reader looks for is in the file named after it: `complete_task` is created (both
    overloads) in `NNNN_function_complete_task.sql` and nowhere else, a table's indexes are in the
    table's file, and a file created for an object creates it."""
    misplaced: list[str] = []
    missing: list[str] = []
    for name, text in load_schema():
        match = SCHEMA_FILE.match(name)
        assert match is not None
        code = re.sub(r"--[^\n]*", "", text)
        created = {
            (_HOME_KIND[" ".join(m["kind"].lower().split())], m["name"].lower())
            for pattern in CREATE
            for m in pattern.finditer(code)
        }
        own = (match["kind"], match["name"]) if match["kind"] else None
        misplaced.extend(
            f"{name} creates {kind} {obj}" for kind, obj in created if (kind, obj) != own
        )
        if own is not None and own[0] != "schema" and own not in created:
            missing.append(f"{name} does not create {own[0]} pgflow.{own[1]}")
    assert not misplaced, (
        "objects created outside their own schema file (move each into NNNN_<kind>_<name>.sql; "
        f"indexes and triggers go with their table): {misplaced}"
    )
    assert not missing, (
        f"schema files that do not create the object they are named after: {missing}"
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0100_functions.sql"], "unexpected schema file name '0100_functions.sql'"),
        (["100_function_f.sql"], "unexpected schema file name"),
        (["0100_function_F.sql"], "unexpected schema file name"),
        (["0100_table.sql"], "unexpected schema file name"),
        (["0100_function_f.sql", "0100_function_g.sql"], "two schema files share number 0100"),
    ],
)
def test_badly_named_schema_files_are_refused(
    tmp_path: Path, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("select 1;")
    with pytest.raises(MigrationError, match=message):
        load_schema(tmp_path)


def test_schema_files_are_loaded_in_number_order(tmp_path: Path) -> None:
    for name in ["0900_roles.sql", "0010_schema_pgflow.sql", "0200_table_t.sql", "README.md"]:
        (tmp_path / name).write_text(f"-- {name}\n")
    assert load_schema(tmp_path) == [
        ("0010_schema_pgflow.sql", "-- 0010_schema_pgflow.sql\n"),
        ("0200_table_t.sql", "-- 0200_table_t.sql\n"),
        ("0900_roles.sql", "-- 0900_roles.sql\n"),
    ]


# --- the databases they build -------------------------------------------------------------------


def test_schema_files_and_migrations_build_the_same_database(
    new_database: Callable[[str | None], str], db_dsn: str, tmp_path: Path
) -> None:
    """`db_dsn` is a clone of the session's template, which `migrate` built from the shipped
    migrations; the other database gets the schema files, one transaction each, on top of what
    `migrate` does before any migration (schema pgflow, table pgflow.migrations, pgmq)."""
    from_schema = new_database(None)
    build_from_schema_files(from_schema, tmp_path / "no_migrations")

    differences = compare(snapshot(from_schema), snapshot(db_dsn))

    if differences:
        pytest.fail(report(differences), pytrace=False)


def build_from_schema_files(dsn: str, empty_dir: Path) -> None:
    # `migrate` with no migrations to apply: exactly what it does before a first migration
    empty_dir.mkdir()
    migrate(dsn, migrations_dir=empty_dir, progress=lambda _: None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, text in load_schema():
            try:
                with conn.transaction():
                    conn.execute(text.encode("utf-8"))
            except psycopg.Error as exc:
                pytest.fail(
                    f"schema file {name}{_line_of(exc, text)} fails when applied after the files "
                    f"numbered before it (an object it needs must come earlier): {exc}",
                    pytrace=False,
                )


def _line_of(exc: psycopg.Error, text: str) -> str:
    position = exc.diag.statement_position
    if not position or not position.isdigit():
        return ""
    return f", line {text[: int(position) - 1].count(chr(10)) + 1},"


# --- catalog snapshots ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the catalog says about every object of the compared schemas.

    objects: "function pgflow.complete_task(uuid, text, integer, jsonb)" -> {property: value}
    parents: an object's table or type, so that the columns of a missing table are not listed
    homes: the (kind, name) of the schema file an object belongs in, for the message
    """

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)
    homes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(
        self,
        key: str,
        props: dict[str, Any],
        *,
        parent: str | None = None,
        home: tuple[str, str] | None = None,
    ) -> None:
        assert key not in self.objects, f"two catalog objects are both called {key!r}"
        self.objects[key] = props
        if parent is not None:
            self.parents[key] = parent
        if home is not None:
            self.homes[key] = home


def acl(items: list[str] | None) -> str:
    """An ACL for comparison: the order of its items means nothing; NULL means the defaults."""
    return "(defaults)" if items is None else ", ".join(sorted(items)) or "(none)"


RELATION_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "S": "sequence",
}
ROUTINE_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}


def snapshot(dsn: str) -> Snapshot:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Names print schema-qualified the same way in both databases whatever their settings.
        conn.execute("set search_path = pg_catalog")
        cur = conn.cursor(row_factory=dict_row)
        snap = Snapshot()

        def rows(query: str) -> list[dict[str, Any]]:
            return cur.execute(query).fetchall()

        for r in rows(
            "select n.nspname, pg_get_userbyid(n.nspowner) as owner, n.nspacl::text[] as acl,"
            " obj_description(n.oid, 'pg_namespace') as comment"
            " from pg_namespace n where " + USER_SCHEMA
        ):
            snap.add(
                f"schema {r['nspname']}",
                {"owner": r["owner"], "privileges": acl(r["acl"]), "comment": r["comment"]},
                home=("schema", r["nspname"]),
            )

        for r in rows(
            "select n.nspname, c.relname, c.relkind::text as relkind,"
            " pg_get_userbyid(c.relowner) as owner, c.relacl::text[] as acl,"
            " c.relpersistence::text as persistence, c.reloptions, c.relrowsecurity,"
            " c.relforcerowsecurity, obj_description(c.oid, 'pg_class') as comment,"
            " case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end as query,"
            " pg_get_partkeydef(c.oid) as partition_key,"
            " pg_get_expr(c.relpartbound, c.oid) as partition_bound,"
            " array(select i.inhparent::regclass::text from pg_inherits i"
            "       where i.inhrelid = c.oid order by i.inhseqno) as parents"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') and " + USER_SCHEMA
        ):
            kind = RELATION_KINDS[r["relkind"]]
            snap.add(
                f"{kind} {r['nspname']}.{r['relname']}",
                {
                    "owner": r["owner"],
                    "privileges": acl(r["acl"]),
                    "persistence": r["persistence"],
                    "options": r["reloptions"],
                    "row level security": (r["relrowsecurity"], r["relforcerowsecurity"]),
                    "comment": r["comment"],
                    "query": r["query"],
                    "partition key": r["partition_key"],
                    "partition bound": r["partition_bound"],
                    "inherits": r["parents"],
                },
                home=(kind.split()[-1], r["relname"]),
            )

        for r in rows(
            "select n.nspname, c.relname, c.relkind::text as relkind, a.attname,"
            " row_number() over (partition by c.oid order by a.attnum) as position,"
            " format_type(a.atttypid, a.atttypmod) as type, a.attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid) as default, a.attidentity::text as identity,"
            " a.attgenerated::text as generated, co.collname, a.attstorage::text as storage,"
            " a.attcompression::text as compression, a.attacl::text[] as acl,"
            " col_description(c.oid, a.attnum) as comment"
            " from pg_attribute a"
            " join pg_class c on c.oid = a.attrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
            " left join pg_collation co on co.oid = a.attcollation"
            " where a.attnum > 0 and not a.attisdropped"
            " and c.relkind in ('r', 'p', 'v', 'm', 'f', 'c') and " + USER_SCHEMA
        ):
            owner = f"{r['nspname']}.{r['relname']}"
            if r["relkind"] == "c":
                key, parent, home = f"attribute {owner}.{r['attname']}", f"type {owner}", "type"
            else:
                kind = RELATION_KINDS[r["relkind"]]
                key, parent = f"column {owner}.{r['attname']}", f"{kind} {owner}"
                home = kind.split()[-1]
            snap.add(
                key,
                {
                    # position counts live columns only: a column dropped by a migration must not
                    # shift the others, but the order of the live ones matters (select *, rowtypes)
                    "position": r["position"],
                    "type": r["type"],
                    "not null": r["attnotnull"],
                    "default": r["default"],
                    "identity": r["identity"],
                    "generated": r["generated"],
                    "collation": r["collname"],
                    "storage": r["storage"],
                    "compression": r["compression"],
                    "privileges": acl(r["acl"]),
                    "comment": r["comment"],
                },
                parent=parent,
                home=(home, r["relname"]),
            )

        for r in rows(
            "select n.nspname, coalesce(c.relname, t.typname) as owner_name,"
            " c.relkind::text as relkind,"
            " con.conname, con.contype::text as contype, pg_get_constraintdef(con.oid) as def,"
            " con.convalidated, obj_description(con.oid, 'pg_constraint') as comment"
            " from pg_constraint con"
            " join pg_namespace n on n.oid = con.connamespace"
            " left join pg_class c on c.oid = con.conrelid"
            " left join pg_type t on t.oid = con.contypid"
            " where " + USER_SCHEMA
        ):
            owner = f"{r['nspname']}.{r['owner_name']}"
            kind = "type" if r["relkind"] is None else RELATION_KINDS.get(r["relkind"], "table")
            snap.add(
                f"constraint {owner}.{r['conname']}",
                {
                    "type": r["contype"],
                    "definition": r["def"],
                    "validated": r["convalidated"],
                    "comment": r["comment"],
                },
                parent=f"{kind} {owner}",
                home=(kind.split()[-1], r["owner_name"]),
            )

        for r in rows(
            "select n.nspname, i.relname, t.relname as table_name, t.relkind::text as table_kind,"
            " pg_get_indexdef(i.oid) as def, x.indisclustered, x.indisreplident,"
            " obj_description(i.oid, 'pg_class') as comment"
            " from pg_index x"
            " join pg_class i on i.oid = x.indexrelid"
            " join pg_class t on t.oid = x.indrelid"
            " join pg_namespace n on n.oid = i.relnamespace"
            " where " + USER_SCHEMA
        ):
            kind = RELATION_KINDS.get(r["table_kind"], "table")
            snap.add(
                f"index {r['nspname']}.{r['relname']}",
                {
                    "definition": r["def"],
                    "clustered": r["indisclustered"],
                    "replica identity": r["indisreplident"],
                    "comment": r["comment"],
                },
                parent=f"{kind} {r['nspname']}.{r['table_name']}",
                home=("table", r["table_name"]),
            )

        for r in rows(
            "select n.nspname, c.relname, format_type(s.seqtypid, null) as type,"
            " s.seqstart::text as start, s.seqincrement::text as increment,"
            " s.seqmin::text as min, s.seqmax::text as max, s.seqcache::text as cache, s.seqcycle,"
            " (select d.refobjid::regclass::text || '.' || a.attname from pg_depend d"
            "   join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid"
            "  where d.classid = 'pg_class'::regclass and d.objid = c.oid"
            "    and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i')) as owned_by"
            " from pg_sequence s"
            " join pg_class c on c.oid = s.seqrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where " + USER_SCHEMA
        ):
            snap.objects[f"sequence {r['nspname']}.{r['relname']}"].update(
                {
                    "type": r["type"],
                    "start, increment, min, max, cache": (
                        r["start"],
                        r["increment"],
                        r["min"],
                        r["max"],
                        r["cache"],
                    ),
                    "cycle": r["seqcycle"],
                    "owned by": r["owned_by"],
                }
            )

        for r in rows(
            "select n.nspname, p.proname, p.prokind::text as prokind,"
            " oidvectortypes(p.proargtypes) as arg_types,"
            " pg_get_function_arguments(p.oid) as arguments,"
            " pg_get_function_result(p.oid) as result, l.lanname,"
            " p.provolatile::text as volatility, p.proparallel::text as parallel, p.prosecdef,"
            " p.proisstrict, p.proleakproof, p.procost, p.prorows, p.proconfig, p.prosrc,"
            " p.probin, pg_get_userbyid(p.proowner) as owner, p.proacl::text[] as acl,"
            " obj_description(p.oid, 'pg_proc') as comment"
            " from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " join pg_language l on l.oid = p.prolang"
            " where " + USER_SCHEMA
        ):
            kind = ROUTINE_KINDS[r["prokind"]]
            snap.add(
                f"{kind} {r['nspname']}.{r['proname']}({r['arg_types']})",
                {
                    "arguments (names, defaults)": r["arguments"],
                    "result type": r["result"],
                    "language": r["lanname"],
                    "volatility": r["volatility"],
                    "parallel": r["parallel"],
                    "security definer": r["prosecdef"],
                    "strict": r["proisstrict"],
                    "leakproof": r["proleakproof"],
                    "cost, rows": (r["procost"], r["prorows"]),
                    "settings": r["proconfig"],
                    "body": r["prosrc"],
                    "object file": r["probin"],
                    "owner": r["owner"],
                    "privileges": acl(r["acl"]),
                    "comment": r["comment"],
                },
                home=("function", r["proname"]),
            )

        for r in rows(
            "select n.nspname, t.typname, t.typtype::text as typtype,"
            " pg_get_userbyid(t.typowner) as owner, t.typacl::text[] as acl,"
            " obj_description(t.oid, 'pg_type') as comment,"
            " array(select e.enumlabel::text from pg_enum e"
            "       where e.enumtypid = t.oid order by e.enumsortorder) as labels,"
            " case when t.typtype = 'd' then format_type(t.typbasetype, t.typtypmod) end as base,"
            " t.typnotnull, t.typdefault,"
            " (select format_type(rg.rngsubtype, null) from pg_range rg"
            "   where rg.rngtypid = t.oid) as range_of"
            " from pg_type t join pg_namespace n on n.oid = t.typnamespace"
            " where " + USER_SCHEMA + " and t.typtype in ('b', 'c', 'd', 'e', 'r')"
            # a table's row type is the table; an array type comes with its element type
            " and (t.typtype <> 'c' or (select c.relkind from pg_class c"
            "                           where c.oid = t.typrelid) = 'c')"
            " and not exists (select from pg_type e where e.typarray = t.oid)"
        ):
            snap.add(
                f"type {r['nspname']}.{r['typname']}",
                {
                    "kind": r["typtype"],
                    "owner": r["owner"],
                    "privileges": acl(r["acl"]),
                    "comment": r["comment"],
                    "enum labels": r["labels"],
                    "domain over": r["base"],
                    "not null": r["typnotnull"],
                    "default": r["typdefault"],
                    "range of": r["range_of"],
                },
                home=("type", r["typname"]),
            )

        for r in rows(
            "select n.nspname, c.relname, c.relkind::text as relkind, tg.tgname,"
            " pg_get_triggerdef(tg.oid) as def, tg.tgenabled::text as enabled,"
            " obj_description(tg.oid, 'pg_trigger') as comment"
            " from pg_trigger tg"
            " join pg_class c on c.oid = tg.tgrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where not tg.tgisinternal and " + USER_SCHEMA
        ):
            kind = RELATION_KINDS.get(r["relkind"], "table")
            snap.add(
                f"trigger {r['nspname']}.{r['relname']}.{r['tgname']}",
                {"definition": r["def"], "enabled": r["enabled"], "comment": r["comment"]},
                parent=f"{kind} {r['nspname']}.{r['relname']}",
                home=("table", r["relname"]),
            )

        for r in rows(
            "select n.nspname, c.relname, c.relkind::text as relkind, po.polname,"
            " po.polcmd::text as cmd, po.polpermissive,"
            " array(select coalesce(ro.rolname, 'public') from unnest(po.polroles) pr(oid)"
            "       left join pg_roles ro on ro.oid = pr.oid order by 1) as roles,"
            " pg_get_expr(po.polqual, po.polrelid) as using_expr,"
            " pg_get_expr(po.polwithcheck, po.polrelid) as check_expr"
            " from pg_policy po"
            " join pg_class c on c.oid = po.polrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where " + USER_SCHEMA
        ):
            kind = RELATION_KINDS.get(r["relkind"], "table")
            snap.add(
                f"policy {r['nspname']}.{r['relname']}.{r['polname']}",
                {
                    "command": r["cmd"],
                    "permissive": r["polpermissive"],
                    "roles": r["roles"],
                    "using": r["using_expr"],
                    "with check": r["check_expr"],
                },
                parent=f"{kind} {r['nspname']}.{r['relname']}",
                home=("table", r["relname"]),
            )

        for r in rows(
            "select r.schemaname, r.tablename, r.rulename, r.definition from pg_rules r"
            " join pg_namespace n on n.nspname = r.schemaname where " + USER_SCHEMA
        ):
            snap.add(
                f"rule {r['schemaname']}.{r['tablename']}.{r['rulename']}",
                {"definition": r["definition"]},
                home=("table", r["tablename"]),
            )

        for r in rows(
            "select pg_get_userbyid(d.defaclrole) as role, n.nspname,"
            " d.defaclobjtype::text as objtype, d.defaclacl::text[] as acl"
            " from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace"
        ):
            where = f"in schema {r['nspname']}" if r["nspname"] else "everywhere"
            snap.add(
                f"default privileges of {r['role']} for objects of type {r['objtype']} {where}",
                {"privileges": acl(r["acl"])},
            )

        for r in rows(
            "select e.extname, e.extversion, n.nspname from pg_extension e"
            " join pg_namespace n on n.oid = e.extnamespace"
        ):
            snap.add(
                f"extension {r['extname']}", {"version": r["extversion"], "schema": r["nspname"]}
            )

        for r in rows(
            "select evtname, evtevent, evtfoid::regproc::text as function,"
            " evtenabled::text as enabled, evttags from pg_event_trigger"
        ):
            snap.add(
                f"event trigger {r['evtname']}",
                {
                    "event": r["evtevent"],
                    "function": r["function"],
                    "enabled": r["enabled"],
                    "tags": r["evttags"],
                },
            )

        database = rows(
            "select d.datacl::text[] as acl,"
            " (select s.setconfig from pg_db_role_setting s"
            "   where s.setdatabase = d.oid and s.setrole = 0) as settings"
            " from pg_database d where d.datname = current_database()"
        )[0]
        snap.add(
            "the database itself",
            {"privileges": acl(database["acl"]), "settings": database["settings"]},
        )
        return snap


# --- differences ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    key: str
    text: str
    home: tuple[str, str] | None
    prop: str | None


def compare(from_schema: Snapshot, from_migrations: Snapshot) -> list[Difference]:
    differences: list[Difference] = []
    keys = sorted(from_schema.objects.keys() | from_migrations.objects.keys())
    for key in keys:
        home = from_schema.homes.get(key) or from_migrations.homes.get(key)
        ours, theirs = from_schema.objects.get(key), from_migrations.objects.get(key)
        if ours is None or theirs is None:
            side, other = (
                (from_migrations, from_schema) if ours is None else (from_schema, from_migrations)
            )
            parent = side.parents.get(key)
            if parent is not None and parent not in other.objects:
                continue  # reported with its table or type
            built_by = MIGRATIONS_SIDE if ours is None else SCHEMA_SIDE
            missing_in = SCHEMA_SIDE if ours is None else MIGRATIONS_SIDE
            differences.append(
                Difference(key, f"only the {built_by} create it, not the {missing_in}", home, None)
            )
            continue
        for prop in sorted(ours.keys() | theirs.keys()):
            a, b = ours.get(prop), theirs.get(prop)
            if a != b:
                differences.append(Difference(key, describe(prop, a, b), home, prop))
    return differences


def describe(prop: str, ours: Any, theirs: Any) -> str:
    if isinstance(ours, str) and isinstance(theirs, str) and "\n" in ours + theirs:
        diff = list(
            difflib.unified_diff(
                theirs.splitlines(),
                ours.splitlines(),
                f"{prop} built by the {MIGRATIONS_SIDE}",
                f"{prop} in the {SCHEMA_SIDE}",
                lineterm="",
                n=2,
            )
        )
        shown = diff[:60] + ([f"... {len(diff) - 60} more lines"] if len(diff) > 60 else [])
        return (
            f"{prop} not the same, as the {MIGRATIONS_SIDE} build it (-) and as the "
            f"{SCHEMA_SIDE} have it (+):\n" + "\n".join("      " + line for line in shown)
        )
    return f"{prop} not the same: {SCHEMA_SIDE} {ours!r}, {MIGRATIONS_SIDE} {theirs!r}"


def report(differences: list[Difference]) -> str:
    files = {name for name, _ in load_schema()}
    lines = [
        f"The schema files ({SCHEMA_DIR.relative_to(PROJECT)}) and the migrations "
        f"({MIGRATIONS_DIR.relative_to(PROJECT)}) build different databases. A schema file "
        "changed without a new migration that makes the same change (or a migration changed "
        "something the schema files do not have): write the missing migration, or fix the schema "
        f"file, until both build the same catalog. {len(differences)} difference(s):"
    ]
    for difference in differences[:100]:
        where = _schema_files_for(difference, files)
        hint = f" (schema file {', '.join(where)})" if where else ""
        lines.append(f"  - {difference.key}{hint}: {difference.text}")
    if len(differences) > 100:
        lines.append(f"  ... and {len(differences) - 100} more")
    return "\n".join(lines)


def _schema_files_for(difference: Difference, files: set[str]) -> list[str]:
    """The schema files to look at for a difference: the object's own file, and the grants file
    when privileges are what differ."""
    found: list[str] = []
    if difference.home is not None:
        kind, name = difference.home
        found.extend(sorted(f for f in files if f[4:] == f"_{kind}_{name}.sql"))
    whole = {"privileges": "grants"}.get(difference.prop or "")
    if whole is not None or difference.key.startswith("default privileges"):
        found.extend(sorted(f for f in files if f[4:] == f"_{whole or 'grants'}.sql"))
    return found
