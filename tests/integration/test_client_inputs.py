"""Run inputs are encoded like handler outputs (the codec's encoder): `Client.start` and
`AsyncClient.start` take msgspec Structs, dataclasses, enums, datetimes, UUIDs and Decimals,
and refuse a value with no JSON form before anything is written."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

from pgflow import AsyncClient, Client, ConfigError, Flow, InputValidationError

Conn = psycopg.Connection[Any]
FLOW = "ci_flow"


class Color(enum.Enum):
    RED = "red"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    placed: datetime.datetime
    total: decimal.Decimal
    color: Color
    points: list[Point]


ORDER = Order(
    id=uuid.UUID("12345678-1234-4234-8234-123456789abc"),
    placed=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
    total=decimal.Decimal("12.50"),
    color=Color.RED,
    points=[Point(1, 2)],
)
ORDER_JSON = {
    "id": "12345678-1234-4234-8234-123456789abc",
    "placed": "2024-05-01T12:30:00Z",
    "total": "12.50",
    "color": "red",
    "points": [{"x": 1, "y": 2}],
}


@pytest.fixture
def flow(conn: Conn) -> str:
    conn.execute("select pgflow.create_flow(%s)", (FLOW,))
    conn.execute("select pgflow.add_step(%s, 'only')", (FLOW,))
    return FLOW


def stored_input(conn: Conn, run_id: str) -> Any:
    row = conn.execute("select input from pgflow.runs where run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ORDER, ORDER_JSON),
        (Point(3, 4), {"x": 3, "y": 4}),
        (
            {"when": datetime.date(2024, 1, 2), "tags": ("a", "b")},
            {"when": "2024-01-02", "tags": ["a", "b"]},
        ),
        (None, None),
        ("text", "text"),
    ],
    ids=["dataclass", "struct", "dict", "null", "string"],
)
def test_client_start_encodes_inputs_like_outputs(
    value: Any, expected: Any, flow: str, conn: Conn, db_dsn: str
) -> None:
    with Client(db_dsn) as client:
        run_id = client.start(flow, value)
    assert stored_input(conn, run_id) == expected


def test_async_client_start_encodes_inputs_like_outputs(flow: str, conn: Conn, db_dsn: str) -> None:
    async def main() -> str:
        async with AsyncClient(db_dsn) as client:
            return await client.start(flow, ORDER)

    assert stored_input(conn, asyncio.run(main())) == ORDER_JSON


def test_an_idempotent_start_compares_the_encoded_input(flow: str, db_dsn: str) -> None:
    run_id = "33333333-0000-4000-8000-000000000000"
    with Client(db_dsn) as client:
        assert client.start(flow, ORDER, run_id) == run_id
        assert client.start(flow, ORDER_JSON, run_id) == run_id  # the same JSON


def test_an_input_with_no_json_form_is_refused(flow: str, conn: Conn, db_dsn: str) -> None:
    with Client(db_dsn) as client, pytest.raises(ConfigError) as caught:
        client.start(flow, {"handle": object()})
    message = str(caught.value)
    assert message.startswith("the run input cannot be turned into JSON (dict): ")
    assert "use dicts, lists, strings" in message
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)


typed = Flow("ci_typed")


@typed.map()
def each_point(point: Point) -> int:
    return point.x + point.y


def test_a_typed_root_input_is_checked_before_anything_is_written(conn: Conn, db_dsn: str) -> None:
    async def main() -> None:
        async with AsyncClient(db_dsn) as client:
            with pytest.raises(InputValidationError) as caught:
                await client.start(typed, [Point(1, 2), {"x": 1}])
            assert str(caught.value) == (
                "step 'each_point' of flow 'ci_typed': the input does not match `Point`: "
                "Object missing required field `y`"
            )
            assert await client.start(typed, [Point(1, 2), {"x": 1, "y": 0}])

    asyncio.run(main())
    assert conn.execute("select count(*) from pgflow.runs").fetchone() == (1,)
