"""Contract section 2: slugs, and the queue-name limits that flow slugs inherit from pgmq."""

from __future__ import annotations

import pytest
from contract_helpers import Conn, create_flow, expect_error, rows, scalar


@pytest.mark.parametrize(
    ("slug", "valid"),
    [
        ("a", True),
        ("_", True),
        ("_private", True),
        ("fetch_user", True),
        ("FetchUser2", True),
        ("x" * 128, True),
        ("runs", True),
        ("run_report", True),
        ("Run", True),
        ("", False),
        ("x" * 129, False),
        ("1st", False),
        ("9", False),
        ("has-dash", False),
        ("has space", False),
        ("dot.ted", False),
        ("semi;colon", False),
        ("ünïcode", False),
        ("run", False),
    ],
)
def test_is_valid_slug(conn: Conn, slug: str, valid: bool) -> None:
    assert scalar(conn, "select pgflow.is_valid_slug(%s)", (slug,)) is valid


def test_flow_table_rejects_invalid_slug(conn: Conn) -> None:
    # the check constraint guards the table itself, not only create_flow
    expect_error(conn, "insert into pgflow.flows (flow_slug) values ('1bad')", None, "slug")


def test_step_table_rejects_invalid_slug(conn: Conn) -> None:
    create_flow(conn, "guarded")
    expect_error(
        conn,
        "insert into pgflow.steps (flow_slug, step_slug, step_index, deps_count)"
        " values ('guarded', 'bad-step', 0, 0)",
        None,
        "slug",
    )


@pytest.mark.parametrize("slug", ["", "1st", "has-dash", "run"])
def test_create_flow_rejects_invalid_slug(conn: Conn, slug: str) -> None:
    expect_error(conn, "select pgflow.create_flow(%s)", (slug,), "slug")
    assert rows(conn, "select * from pgflow.flows") == []


def test_flow_slug_of_47_characters_is_accepted(conn: Conn) -> None:
    slug = "f" * 47
    created = create_flow(conn, slug)
    assert created["flow_slug"] == slug
    assert scalar(conn, "select count(*) from pgmq.list_queues() where queue_name = %s", (slug,))


def test_flow_slug_over_47_characters_is_rejected_clearly(conn: Conn) -> None:
    slug = "f" * 48
    # valid as a slug, but too long for a pgmq queue name: refused before anything is created
    assert scalar(conn, "select pgflow.is_valid_slug(%s)", (slug,)) is True
    expect_error(conn, "select pgflow.create_flow(%s)", (slug,), "47")
    assert rows(conn, "select * from pgflow.flows") == []
    assert rows(conn, "select * from pgmq.meta") == []


def test_step_slug_may_be_longer_than_47_characters(conn: Conn) -> None:
    # only flow slugs become queue names
    create_flow(conn, "long_steps")
    step_slug = "s" * 128
    added = scalar(conn, "select step_slug from pgflow.add_step('long_steps', %s)", (step_slug,))
    assert added == step_slug


def test_flow_slug_differing_only_by_case_is_rejected(conn: Conn) -> None:
    create_flow(conn, "Orders")
    text = expect_error(conn, "select pgflow.create_flow('orders')", None)
    # the message must name the flow it collides with
    assert "Orders" in text, f"error should name the existing flow 'Orders': {text!r}"
    assert [r["flow_slug"] for r in rows(conn, "select flow_slug from pgflow.flows")] == ["Orders"]


def test_same_slug_with_same_case_is_not_a_collision(conn: Conn) -> None:
    first = create_flow(conn, "Orders")
    again = create_flow(conn, "Orders")
    assert again == first
