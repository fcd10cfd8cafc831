"""Contract sections 3 and 5: create_flow, add_step and the definition tables."""

from __future__ import annotations

import pytest
from contract_helpers import (
    Conn,
    add_step,
    create_flow,
    define_flow,
    expect_error,
    map_step,
    one,
    rows,
    scalar,
    single,
)

# ---------------------------------------------------------------------------------------------
# create_flow


def test_create_flow_null_options_become_3_5_60(conn: Conn) -> None:
    created = create_flow(conn, "defaults")
    assert created["flow_slug"] == "defaults"
    assert (created["opt_max_attempts"], created["opt_base_delay"], created["opt_timeout"]) == (
        3,
        5,
        60,
    )
    assert created["created_at"] is not None


def test_create_flow_with_only_a_slug_uses_the_same_defaults(conn: Conn) -> None:
    created = one(conn, "select * from pgflow.create_flow(flow_slug => 'bare')")
    assert (created["opt_max_attempts"], created["opt_base_delay"], created["opt_timeout"]) == (
        3,
        5,
        60,
    )


def test_flows_table_defaults_are_3_1_60(conn: Conn) -> None:
    # the table's own defaults differ from create_flow's: both are part of the contract
    inserted = one(conn, "insert into pgflow.flows (flow_slug) values ('raw') returning *")
    assert (inserted["opt_max_attempts"], inserted["opt_base_delay"], inserted["opt_timeout"]) == (
        3,
        1,
        60,
    )


def test_create_flow_stores_given_options(conn: Conn) -> None:
    created = one(
        conn,
        "select * from pgflow.create_flow(flow_slug => 'tuned', max_attempts => 7,"
        " base_delay => 2, timeout => 30)",
    )
    assert (created["opt_max_attempts"], created["opt_base_delay"], created["opt_timeout"]) == (
        7,
        2,
        30,
    )
    stored = one(conn, "select * from pgflow.flows where flow_slug = 'tuned'")
    assert stored == created


def test_create_flow_accepts_zero_attempts_and_zero_delay(conn: Conn) -> None:
    created = create_flow(conn, "zeros", max_attempts=0, base_delay=0, timeout=1)
    assert (created["opt_max_attempts"], created["opt_base_delay"], created["opt_timeout"]) == (
        0,
        0,
        1,
    )


def test_create_flow_is_idempotent(conn: Conn) -> None:
    first = create_flow(conn, "twice", max_attempts=7, base_delay=2, timeout=30)
    again = create_flow(conn, "twice", max_attempts=1, base_delay=1, timeout=1)
    assert again == first
    assert scalar(conn, "select count(*) from pgflow.flows") == 1
    assert scalar(conn, "select count(*) from pgmq.meta where queue_name = 'twice'") == 1


def test_create_flow_creates_its_queue(conn: Conn) -> None:
    create_flow(conn, "queued_flow")
    names = [r["queue_name"] for r in rows(conn, "select queue_name from pgmq.list_queues()")]
    assert names == ["queued_flow"]
    assert scalar(conn, "select to_regclass('pgmq.q_queued_flow') is not null") is True
    # a message can be sent to it right away
    assert scalar(conn, "select pgmq.send('queued_flow', '{}'::jsonb)") is not None


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_attempts", -1),
        ("base_delay", -1),
        ("timeout", 0),
        ("timeout", -5),
    ],
)
def test_create_flow_rejects_out_of_range_options(conn: Conn, option: str, value: int) -> None:
    expect_error(
        conn,
        f"select pgflow.create_flow(flow_slug => 'bad_options', {option} => %s)",
        (value,),
        option,
    )
    assert rows(conn, "select * from pgflow.flows") == []
    assert rows(conn, "select * from pgmq.meta") == []


# ---------------------------------------------------------------------------------------------
# add_step: rows and edges


def test_add_step_defaults(conn: Conn) -> None:
    create_flow(conn, "plain")
    step = one(conn, "select * from pgflow.add_step('plain', 'only')")
    assert step["flow_slug"] == "plain"
    assert step["step_slug"] == "only"
    assert step["step_type"] == "single"
    assert step["deps_count"] == 0
    assert step["when_unmet"] == "skip"
    assert step["when_exhausted"] == "fail"
    for inherited in ("opt_max_attempts", "opt_base_delay", "opt_timeout", "opt_start_delay"):
        assert step[inherited] is None, f"{inherited} should be NULL (inherit from the flow)"
    assert step["required_input_pattern"] is None
    assert step["forbidden_input_pattern"] is None
    assert step["created_at"] is not None


def test_add_step_stores_options_patterns_and_modes(conn: Conn) -> None:
    create_flow(conn, "tuned_steps")
    step = add_step(
        conn,
        "tuned_steps",
        single(
            "careful",
            max_attempts=5,
            base_delay=3,
            timeout=90,
            start_delay=12,
            required={"region": "eu"},
            forbidden={"dry_run": True},
            when_unmet="fail",
            when_exhausted="skip-cascade",
        ),
    )
    assert (step["opt_max_attempts"], step["opt_base_delay"]) == (5, 3)
    assert (step["opt_timeout"], step["opt_start_delay"]) == (90, 12)
    assert step["required_input_pattern"] == {"region": "eu"}
    assert step["forbidden_input_pattern"] == {"dry_run": True}
    assert (step["when_unmet"], step["when_exhausted"]) == ("fail", "skip-cascade")


def test_add_step_assigns_step_index_in_insertion_order(conn: Conn) -> None:
    define_flow(
        conn,
        "ordered",
        [single("zeta"), single("alpha"), single("mid", "zeta", "alpha"), single("beta")],
    )
    found = rows(
        conn,
        "select step_slug, step_index from pgflow.steps where flow_slug = 'ordered'"
        " order by step_index",
    )
    assert [r["step_slug"] for r in found] == ["zeta", "alpha", "mid", "beta"]
    first = found[0]["step_index"]
    assert [r["step_index"] - first for r in found] == [0, 1, 2, 3]


def test_step_index_is_per_flow(conn: Conn) -> None:
    define_flow(conn, "one_flow", [single("a"), single("b")])
    define_flow(conn, "other_flow", [single("c")])
    per_flow = {
        (r["flow_slug"], r["step_slug"]): r["step_index"]
        for r in rows(conn, "select flow_slug, step_slug, step_index from pgflow.steps")
    }
    assert per_flow[("other_flow", "c")] == per_flow[("one_flow", "a")]


def test_add_step_records_dependency_edges_and_count(conn: Conn) -> None:
    define_flow(
        conn,
        "edges",
        [single("a"), single("b"), single("c", "a", "b"), single("d", "c")],
    )
    edges = rows(
        conn,
        "select flow_slug, dep_slug, step_slug from pgflow.deps where flow_slug = 'edges'"
        " order by step_slug, dep_slug",
    )
    assert [(e["dep_slug"], e["step_slug"]) for e in edges] == [
        ("a", "c"),
        ("b", "c"),
        ("c", "d"),
    ]
    counts = {
        r["step_slug"]: r["deps_count"]
        for r in rows(conn, "select step_slug, deps_count from pgflow.steps")
    }
    assert counts == {"a": 0, "b": 0, "c": 2, "d": 1}


def test_add_step_is_idempotent(conn: Conn) -> None:
    define_flow(conn, "stable", [single("a"), single("b"), single("c", "a", max_attempts=4)])
    before = one(conn, "select * from pgflow.steps where step_slug = 'c'")
    again = one(
        conn,
        "select * from pgflow.add_step('stable', 'c', array['a', 'b'], max_attempts => 9,"
        " when_exhausted => 'skip')",
    )
    assert again == before
    assert scalar(conn, "select count(*) from pgflow.steps where flow_slug = 'stable'") == 3
    deps = rows(conn, "select dep_slug from pgflow.deps where step_slug = 'c'")
    assert [d["dep_slug"] for d in deps] == ["a"]


def test_map_step_may_have_no_dependency(conn: Conn) -> None:
    create_flow(conn, "root_map")
    step = add_step(conn, "root_map", map_step("each"))
    assert (step["step_type"], step["deps_count"]) == ("map", 0)


def test_map_step_may_have_one_dependency(conn: Conn) -> None:
    define_flow(conn, "dep_map", [single("list")])
    step = add_step(conn, "dep_map", map_step("each", "list"))
    assert (step["step_type"], step["deps_count"]) == ("map", 1)


def test_map_step_with_two_dependencies_is_rejected_naming_step_and_count(conn: Conn) -> None:
    define_flow(conn, "two_parents", [single("left"), single("right")])
    expect_error(
        conn,
        "select pgflow.add_step('two_parents', 'joiner', array['left', 'right'],"
        " step_type => 'map')",
        None,
        "joiner",
        "2",
    )
    assert scalar(conn, "select count(*) from pgflow.steps where step_slug = 'joiner'") == 0
    assert scalar(conn, "select count(*) from pgflow.deps where step_slug = 'joiner'") == 0


# ---------------------------------------------------------------------------------------------
# add_step: rejected input


def test_add_step_to_unknown_flow_is_rejected(conn: Conn) -> None:
    expect_error(conn, "select pgflow.add_step('ghost_flow', 'a')", None, "ghost_flow")


def test_add_step_with_unknown_dependency_is_rejected(conn: Conn) -> None:
    define_flow(conn, "deps_check", [single("a")])
    expect_error(
        conn, "select pgflow.add_step('deps_check', 'b', array['a', 'nowhere'])", None, "nowhere"
    )
    assert scalar(conn, "select count(*) from pgflow.steps where step_slug = 'b'") == 0


def test_add_step_depending_on_itself_is_rejected(conn: Conn) -> None:
    create_flow(conn, "selfish")
    expect_error(
        conn,
        "select pgflow.add_step('selfish', 'loopy', array['loopy'])",
        None,
        "loopy",
        ("itself", "self", "own", "dep"),
    )
    assert scalar(conn, "select count(*) from pgflow.steps where flow_slug = 'selfish'") == 0


def test_deps_table_rejects_self_edge(conn: Conn) -> None:
    define_flow(conn, "edge_guard", [single("a")])
    expect_error(
        conn,
        "insert into pgflow.deps (flow_slug, dep_slug, step_slug) values ('edge_guard', 'a', 'a')",
    )


@pytest.mark.parametrize("slug", ["", "2nd", "bad-slug", "run", "x" * 129])
def test_add_step_rejects_invalid_step_slug(conn: Conn, slug: str) -> None:
    create_flow(conn, "slugs")
    expect_error(conn, "select pgflow.add_step('slugs', %s)", (slug,), "slug")
    assert scalar(conn, "select count(*) from pgflow.steps") == 0


@pytest.mark.parametrize("parameter", ["required_input_pattern", "forbidden_input_pattern"])
@pytest.mark.parametrize("value", ["[1, 2]", '"text"', "42", "true"])
def test_add_step_rejects_non_object_patterns(conn: Conn, parameter: str, value: str) -> None:
    create_flow(conn, "patterns")
    expect_error(
        conn,
        f"select pgflow.add_step('patterns', 'a', {parameter} => %s::jsonb)",
        (value,),
        "pattern",
    )
    assert scalar(conn, "select count(*) from pgflow.steps") == 0


@pytest.mark.parametrize(
    ("parameter", "word"),
    [
        ("when_unmet", "explode"),
        ("when_unmet", "retry"),
        ("when_exhausted", "ignore"),
        ("when_exhausted", "SKIP"),
        ("step_type", "reduce"),
    ],
)
def test_add_step_rejects_unknown_mode_words(conn: Conn, parameter: str, word: str) -> None:
    create_flow(conn, "modes")
    expect_error(
        conn,
        f"select pgflow.add_step('modes', 'a', {parameter} => %s)",
        (word,),
        (parameter, word),
    )
    assert scalar(conn, "select count(*) from pgflow.steps") == 0


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("max_attempts", -1),
        ("base_delay", -1),
        ("timeout", 0),
        ("timeout", -1),
        ("start_delay", -1),
    ],
)
def test_add_step_rejects_out_of_range_options(conn: Conn, parameter: str, value: int) -> None:
    create_flow(conn, "step_options")
    expect_error(
        conn,
        f"select pgflow.add_step('step_options', 'a', {parameter} => %s)",
        (value,),
        parameter,
    )
    assert scalar(conn, "select count(*) from pgflow.steps") == 0


def test_add_step_accepts_zero_where_zero_is_allowed(conn: Conn) -> None:
    create_flow(conn, "zero_ok")
    step = one(
        conn,
        "select * from pgflow.add_step('zero_ok', 'a', max_attempts => 0, base_delay => 0,"
        " start_delay => 0, timeout => 1)",
    )
    assert (step["opt_max_attempts"], step["opt_base_delay"], step["opt_start_delay"]) == (0, 0, 0)
