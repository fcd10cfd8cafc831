"""Contract section 5: flow shapes, ensure_flow_compiled and delete_flow_and_data."""

from __future__ import annotations

import copy
from typing import Any

import psycopg
import pytest
from contract_helpers import (
    Conn,
    compare_shapes,
    define_flow,
    ensure_compiled,
    get_flow_shape,
    jsonb,
    map_step,
    one,
    read_and_start,
    register_worker,
    rows,
    scalar,
    shape_step,
    single,
    start_flow,
)


def diamond_shape() -> dict[str, Any]:
    return {
        "steps": [
            shape_step("fetch"),
            shape_step("split", ["fetch"], when_exhausted="skip"),
            shape_step("each", ["split"], step_type="map"),
            shape_step(
                "report",
                ["fetch", "each"],
                when_unmet="fail",
                when_exhausted="skip-cascade",
                required={"each": [1]},
                forbidden={"fetch": {"empty": True}},
            ),
        ]
    }


def with_options(shape: dict[str, Any]) -> dict[str, Any]:
    """The same shape with the runtime options a compiler may attach (not part of the shape)."""
    result = copy.deepcopy(shape)
    result["options"] = {"maxAttempts": 7, "baseDelay": 2, "timeout": 45}
    for number, step in enumerate(result["steps"]):
        step["options"] = {
            "maxAttempts": number + 1,
            "baseDelay": number + 2,
            "timeout": number + 10,
            "startDelay": number,
        }
    return result


# ---------------------------------------------------------------------------------------------
# _get_flow_shape


def test_get_flow_shape_exact_format(conn: Conn) -> None:
    define_flow(
        conn,
        "shaped",
        [
            single("fetch"),
            single("split", "fetch", when_exhausted="skip"),
            map_step("each", "split"),
            # dependencies given unsorted: the shape lists them sorted
            single(
                "report",
                "each",
                "fetch",
                when_unmet="fail",
                when_exhausted="skip-cascade",
                required={"each": [1]},
                forbidden={"fetch": {"empty": True}},
                max_attempts=9,
                timeout=99,
            ),
        ],
    )
    assert get_flow_shape(conn, "shaped") == diamond_shape()


def test_get_flow_shape_follows_step_index_not_slug_order(conn: Conn) -> None:
    define_flow(conn, "by_index", [single("zz"), single("aa"), single("mm", "zz", "aa")])
    shape = get_flow_shape(conn, "by_index")
    assert [s["slug"] for s in shape["steps"]] == ["zz", "aa", "mm"]
    assert shape["steps"][2]["dependencies"] == ["aa", "zz"]


def test_get_flow_shape_of_flow_without_steps(conn: Conn) -> None:
    define_flow(conn, "empty_flow", [])
    assert get_flow_shape(conn, "empty_flow") == {"steps": []}


def test_get_flow_shape_leaves_out_runtime_options(conn: Conn) -> None:
    define_flow(conn, "opts_a", [single("a", max_attempts=1, base_delay=1, timeout=5)])
    define_flow(
        conn,
        "opts_b",
        [single("a", max_attempts=8, base_delay=9, timeout=50, start_delay=3)],
        max_attempts=1,
    )
    assert get_flow_shape(conn, "opts_a") == get_flow_shape(conn, "opts_b")


# ---------------------------------------------------------------------------------------------
# _compare_flow_shapes


def test_compare_equal_shapes_is_empty(conn: Conn) -> None:
    assert compare_shapes(conn, diamond_shape(), diamond_shape()) == []


def test_compare_ignores_options(conn: Conn) -> None:
    assert compare_shapes(conn, with_options(diamond_shape()), diamond_shape()) == []
    assert compare_shapes(conn, diamond_shape(), with_options(diamond_shape())) == []


def test_compare_against_database_shape(conn: Conn) -> None:
    define_flow(conn, "db_side", [single("a"), map_step("b", "a")])
    local = {"steps": [shape_step("a"), shape_step("b", ["a"], step_type="map")]}
    assert compare_shapes(conn, local, get_flow_shape(conn, "db_side")) == []


def _mutate(shape: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(shape)
    changed["steps"][index].update(changes)
    return changed


MUTATIONS = [
    # (description, mutated shape, fragments the differences must mention)
    ("extra step", {"steps": [*diamond_shape()["steps"], shape_step("extra")]}, ["extra"]),
    ("missing step", {"steps": diamond_shape()["steps"][:3]}, ["report"]),
    ("renamed step", _mutate(diamond_shape(), 0, slug="retrieve"), ["retrieve", "fetch"]),
    ("step type", _mutate(diamond_shape(), 2, stepType="single"), ["single", "map"]),
    ("dependencies", _mutate(diamond_shape(), 3, dependencies=["each"]), ["fetch"]),
    ("whenUnmet", _mutate(diamond_shape(), 3, whenUnmet="skip"), ["skip", "fail"]),
    ("whenExhausted", _mutate(diamond_shape(), 1, whenExhausted="fail"), ["skip", "fail"]),
    (
        "required pattern",
        _mutate(diamond_shape(), 0, requiredInputPattern={"defined": True, "value": {"k": 1}}),
        ["pattern"],
    ),
    (
        "forbidden pattern removed",
        _mutate(diamond_shape(), 3, forbiddenInputPattern={"defined": False}),
        ["pattern"],
    ),
    (
        "pattern value",
        _mutate(diamond_shape(), 3, requiredInputPattern={"defined": True, "value": {"each": [2]}}),
        ["pattern"],
    ),
]


@pytest.mark.parametrize(
    ("local", "mentions"),
    [pytest.param(local, mentions, id=name) for name, local, mentions in MUTATIONS],
)
def test_compare_reports_readable_differences(
    conn: Conn, local: dict[str, Any], mentions: list[str]
) -> None:
    differences = compare_shapes(conn, local, diamond_shape())
    assert differences, "different shapes must produce at least one difference"
    assert all(isinstance(d, str) and d.strip() for d in differences)
    text = "\n".join(differences).lower()
    for fragment in mentions:
        assert fragment.lower() in text, f"differences should mention {fragment!r}: {differences}"


def test_compare_is_not_fooled_by_same_count(conn: Conn) -> None:
    local = {"steps": [shape_step("a"), shape_step("b")]}
    db = {"steps": [shape_step("a"), shape_step("c")]}
    differences = compare_shapes(conn, local, db)
    assert differences
    assert "b" in "\n".join(differences) and "c" in "\n".join(differences)


# ---------------------------------------------------------------------------------------------
# _create_flow_from_shape


def test_create_flow_from_shape_round_trips(conn: Conn) -> None:
    conn.execute(
        "select pgflow._create_flow_from_shape(%s, %s)",
        ("from_shape", jsonb(diamond_shape())),
    )
    assert get_flow_shape(conn, "from_shape") == diamond_shape()
    assert scalar(conn, "select count(*) from pgmq.meta where queue_name = 'from_shape'") == 1


def test_create_flow_from_shape_applies_options(conn: Conn) -> None:
    conn.execute(
        "select pgflow._create_flow_from_shape(p_flow_slug => %s, p_shape => %s)",
        ("with_opts", jsonb(with_options(diamond_shape()))),
    )
    flow = one(conn, "select * from pgflow.flows where flow_slug = 'with_opts'")
    assert (flow["opt_max_attempts"], flow["opt_base_delay"], flow["opt_timeout"]) == (7, 2, 45)
    steps = rows(
        conn,
        "select step_slug, opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay"
        " from pgflow.steps where flow_slug = 'with_opts' order by step_index",
    )
    assert [
        (s["opt_max_attempts"], s["opt_base_delay"], s["opt_timeout"], s["opt_start_delay"])
        for s in steps
    ] == [(n + 1, n + 2, n + 10, n) for n in range(4)]
    assert get_flow_shape(conn, "with_opts") == diamond_shape()


def test_create_flow_from_shape_without_options_uses_defaults(conn: Conn) -> None:
    conn.execute(
        "select pgflow._create_flow_from_shape(%s, %s)",
        ("no_opts", jsonb({"steps": [shape_step("a")]})),
    )
    flow = one(conn, "select * from pgflow.flows where flow_slug = 'no_opts'")
    assert (flow["opt_max_attempts"], flow["opt_base_delay"], flow["opt_timeout"]) == (3, 5, 60)
    step = one(conn, "select * from pgflow.steps where flow_slug = 'no_opts'")
    assert step["opt_max_attempts"] is None and step["opt_timeout"] is None


# ---------------------------------------------------------------------------------------------
# ensure_flow_compiled


def test_ensure_compiled_creates_missing_flow(conn: Conn) -> None:
    result = ensure_compiled(conn, "fresh", diamond_shape())
    assert result == {"status": "compiled", "differences": []}
    assert get_flow_shape(conn, "fresh") == diamond_shape()
    assert scalar(conn, "select count(*) from pgmq.meta where queue_name = 'fresh'") == 1


def test_ensure_compiled_uses_shape_options_when_creating(conn: Conn) -> None:
    result = ensure_compiled(conn, "fresh_opts", with_options(diamond_shape()))
    assert result["status"] == "compiled"
    flow = one(conn, "select * from pgflow.flows where flow_slug = 'fresh_opts'")
    assert (flow["opt_max_attempts"], flow["opt_base_delay"], flow["opt_timeout"]) == (7, 2, 45)


def test_ensure_compiled_verifies_equal_flow(conn: Conn) -> None:
    ensure_compiled(conn, "same", diamond_shape())
    created_at = scalar(conn, "select created_at from pgflow.flows where flow_slug = 'same'")
    result = ensure_compiled(conn, "same", diamond_shape())
    assert result == {"status": "verified", "differences": []}
    # verified means untouched, not recreated
    assert scalar(conn, "select created_at from pgflow.flows where flow_slug = 'same'") == (
        created_at
    )


def test_ensure_compiled_verified_even_when_options_differ(conn: Conn) -> None:
    # options are not part of the shape: changing them is never a mismatch
    ensure_compiled(conn, "opt_change", diamond_shape())
    result = ensure_compiled(conn, "opt_change", with_options(diamond_shape()))
    assert result == {"status": "verified", "differences": []}
    assert get_flow_shape(conn, "opt_change") == diamond_shape()


def test_ensure_compiled_reports_mismatch_without_data_loss(conn: Conn) -> None:
    ensure_compiled(conn, "guarded", diamond_shape())
    run = start_flow(conn, "guarded", {"k": 1})
    changed = _mutate(diamond_shape(), 2, stepType="single")
    result = ensure_compiled(conn, "guarded", changed, allow_data_loss=False)
    assert result["status"] == "mismatch"
    assert result["differences"], "a mismatch must list its differences"
    assert any("map" in d and "single" in d for d in result["differences"])
    # nothing changed in the database
    assert get_flow_shape(conn, "guarded") == diamond_shape()
    assert scalar(conn, "select count(*) from pgflow.runs where run_id = %s", (run["run_id"],))


def test_ensure_compiled_defaults_to_no_data_loss(conn: Conn) -> None:
    ensure_compiled(conn, "default_guard", diamond_shape())
    result = scalar(
        conn,
        "select pgflow.ensure_flow_compiled(%s, %s)",
        ("default_guard", jsonb({"steps": [shape_step("other")]})),
    )
    assert result["status"] == "mismatch"
    assert get_flow_shape(conn, "default_guard") == diamond_shape()


def test_ensure_compiled_recompiles_when_data_loss_allowed(conn: Conn) -> None:
    ensure_compiled(conn, "replaced", diamond_shape())
    run = start_flow(conn, "replaced", {"k": 1})
    new_shape = {"steps": [shape_step("only"), shape_step("after", ["only"])]}
    result = ensure_compiled(conn, "replaced", new_shape, allow_data_loss=True)
    assert result["status"] == "recompiled"
    assert isinstance(result["differences"], list)
    assert get_flow_shape(conn, "replaced") == new_shape
    # the old flow's runs went with it, and the queue exists again for the new definition
    assert scalar(conn, "select count(*) from pgflow.runs where run_id = %s", (run["run_id"],)) == 0
    assert scalar(conn, "select count(*) from pgmq.meta where queue_name = 'replaced'") == 1
    new_run = start_flow(conn, "replaced", {})
    assert new_run["remaining_steps"] == 2


def test_ensure_compiled_with_data_loss_allowed_still_verifies_equal_flow(conn: Conn) -> None:
    ensure_compiled(conn, "keep", diamond_shape())
    run = start_flow(conn, "keep", {"k": 1})
    result = ensure_compiled(conn, "keep", diamond_shape(), allow_data_loss=True)
    assert result == {"status": "verified", "differences": []}
    assert scalar(conn, "select count(*) from pgflow.runs where run_id = %s", (run["run_id"],))


# ---------------------------------------------------------------------------------------------
# delete_flow_and_data


def test_delete_flow_and_data_drops_queue_and_rows(conn: Conn) -> None:
    define_flow(conn, "doomed", [single("a"), map_step("b", "a")])
    define_flow(conn, "survivor", [single("a")])
    worker = register_worker(conn, "doomed")
    start_flow(conn, "doomed", {})
    start_flow(conn, "doomed", {})
    read_and_start(conn, "doomed", worker)
    kept_run = start_flow(conn, "survivor", {})

    conn.execute("select pgflow.delete_flow_and_data(%s)", ("doomed",))

    for table in ("flows", "steps", "deps", "runs", "step_states", "step_tasks"):
        count = scalar(conn, f"select count(*) from pgflow.{table} where flow_slug = 'doomed'")
        assert count == 0, f"pgflow.{table} still has rows of the deleted flow"
    assert scalar(conn, "select count(*) from pgmq.meta where queue_name = 'doomed'") == 0
    assert scalar(conn, "select to_regclass('pgmq.q_doomed') is null") is True
    # other flows are untouched
    assert get_flow_shape(conn, "survivor") == {"steps": [shape_step("a")]}
    assert scalar(
        conn, "select count(*) from pgflow.step_tasks where run_id = %s", (kept_run["run_id"],)
    )
    assert scalar(conn, "select count(*) from pgmq.q_survivor") == 1


def test_ensure_compiled_holds_a_per_flow_lock(conn: Conn, db_dsn: str) -> None:
    ensure_compiled(conn, "locked", diamond_shape())
    ensure_compiled(conn, "free", diamond_shape())
    with psycopg.connect(db_dsn, autocommit=True) as other:
        # a verified compile takes no row locks, so only the advisory lock can make this wait
        other.execute("set lock_timeout = '200ms'")
        with conn.transaction():
            assert ensure_compiled(conn, "locked", diamond_shape())["status"] == "verified"
            with pytest.raises(psycopg.errors.LockNotAvailable):
                ensure_compiled(other, "locked", diamond_shape())
            assert ensure_compiled(other, "free", diamond_shape())["status"] == "verified"
        assert ensure_compiled(other, "locked", diamond_shape())["status"] == "verified"
