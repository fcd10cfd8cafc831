"""pgflow-pydantic: handlers take and return pydantic models, through real workers (thread and
process executors, batched and per task) and a real database; inputs that do not fit fail their
task at once, or are refused by `Client.start` before the run exists. Then the type adapter and
the serializer on their own, without a database."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import pydantic
import pydantic_flows as flows
import pytest
from contract_helpers import Conn, rows
from pydantic_flows import Item, Line, Order, PricedLine, Summary
from worker_helpers import CONCURRENCY, POLL_INTERVAL, Mode, RunningWorker, modes

import pgflow_pydantic
from pgflow import codec, plugins
from pgflow.client import Client
from pgflow.errors import FlowDefinitionError, InputValidationError
from pgflow.flow import Flow
from pgflow.worker import Worker

ORDER_ID = UUID("6f1c1d52-4a0e-4e8e-9d7e-2f1d3c1b0a99")
PLACED = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)
ORDER = Order(
    order_id=ORDER_ID,
    placed=PLACED,
    items=[
        Item(sku="apple", qty=3, unit_price=Decimal("0.50")),
        Item(sku="pear", qty=2, unit_price=Decimal("1.25")),
    ],
)
EXPECTED = {
    "total": {
        "summary": {"order_id": str(ORDER_ID), "skus": ["apple", "pear"], "grand_total": "4.00"}
    }
}
# qty must be > 0, and the second item has no sku
BAD_ORDER = {
    "order_id": str(ORDER_ID),
    "placed": PLACED.isoformat(),
    "items": [{"sku": "apple", "qty": 0, "unit_price": "1"}, {"qty": 1, "unit_price": "1"}],
}
BAD_REASON = (
    "Input should be greater than 0 - at `$.items[0].qty`; Field required - at `$.items[1].sku`"
)


@pytest.fixture(autouse=True)
def fresh_plugin_manager() -> Iterator[None]:
    # built from the environment conftest.py set up, whatever other tests left behind
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def running(dsn: str, mode: Mode, flow: Flow) -> RunningWorker:
    name = next(name for name, value in vars(flows).items() if value is flow)
    worker = RunningWorker(
        Worker(
            [f"{flows.__name__}:{name}"],
            dsn=dsn,
            executor=mode.executor,
            per_task=mode.per_task,
            concurrency=CONCURRENCY[mode.executor],
            poll_interval=POLL_INTERVAL,
            shutdown_grace=5.0,
            install_signal_handlers=False,
        )
    )
    worker.start()
    return worker


def tasks(conn: Conn, run_id: str) -> list[dict[str, Any]]:
    return rows(
        conn,
        "select step_slug, task_index, status, attempts_count, error_message, output "
        "from pgflow.step_tasks where run_id = %s order by step_slug, task_index",
        (run_id,),
    )


# -- end to end -----------------------------------------------------------------------------------


@modes(Mode("thread"), Mode("thread", per_task=True), Mode("process"))
def test_models_in_and_out_with_the_default_serializer(db_dsn: str, conn: Conn, mode: Mode) -> None:
    worker = running(db_dsn, mode, flows.orders)
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.orders, ORDER)  # a model as the run input
            run = worker.finish(client, run_id)
            output = client.wait(run_id, timeout=10)
    finally:
        worker.stop()
    assert run.status == "completed", run
    assert output == EXPECTED
    # stored as plain JSON, as msgspec writes UUIDs, datetimes and Decimals
    (stored,) = rows(conn, "select input from pgflow.runs where run_id = %s", (run_id,))
    assert stored["input"] == json.loads(ORDER.model_dump_json())
    by_step = {(t["step_slug"], t["task_index"]): t for t in tasks(conn, run_id)}
    assert by_step["price", 1]["output"] == {
        "order_id": str(ORDER_ID),
        "sku": "pear",
        "total": "2.50",
    }
    assert [len(by_step["split", 0]["output"]), by_step["split", 0]["output"][0]["sku"]] == [
        2,
        "apple",
    ]


@modes(Mode("thread"), Mode("process", per_task=True))
def test_models_in_and_out_with_the_pydantic_serializer(
    db_dsn: str, conn: Conn, mode: Mode
) -> None:
    worker = running(db_dsn, mode, flows.orders_pydantic)
    try:
        with Client(db_dsn) as client:
            run_id = client.start(flows.orders_pydantic, ORDER)
            run = worker.finish(client, run_id)
            output = client.wait(run_id, timeout=10)
    finally:
        worker.stop()
    assert run.status == "completed", run
    assert output == EXPECTED
    (stored,) = rows(conn, "select input from pgflow.runs where run_id = %s", (run_id,))
    assert stored["input"] == json.loads(ORDER.model_dump_json())
    assert rows(conn, "select serializer from pgflow.flow_serializers") == [
        {"serializer": "pydantic"}
    ]


@modes(Mode("thread"), Mode("process", per_task=True))
def test_an_input_that_fails_validation_fails_the_task_without_retries(
    db_dsn: str, conn: Conn, mode: Mode
) -> None:
    assert flows.orders.max_attempts == 3  # retries are allowed, yet not taken
    worker = running(db_dsn, mode, flows.orders)
    try:
        with Client(db_dsn) as client:
            # by slug: the client knows no handler, so only the worker can refuse the input
            run_id = client.start(flows.orders.slug, BAD_ORDER)
            run = worker.finish(client, run_id)
    finally:
        worker.stop()
    assert run.status == "failed"
    (failed,) = tasks(conn, run_id)
    assert (failed["step_slug"], failed["status"], failed["attempts_count"]) == (
        "split",
        "failed",
        1,
    )
    assert failed["error_message"] == (
        "InputValidationError: step 'split' of flow 'pyd_orders': the input does not match "
        f"`Order`: {BAD_REASON}"
    )


def test_client_start_refuses_an_input_that_fails_validation(db_dsn: str, conn: Conn) -> None:
    with Client(db_dsn) as client, pytest.raises(InputValidationError) as caught:
        client.start(flows.orders, BAD_ORDER)
    assert caught.value.reason == BAD_REASON
    assert caught.value.step_slug == "split"
    assert rows(conn, "select count(*) as n from pgflow.runs") == [{"n": 0}]


# -- definition time ------------------------------------------------------------------------------


def test_a_model_input_without_the_plugin_is_a_definition_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plugins.manager, "_entry_points", lambda: ())
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    plugins.reset_plugin_manager()
    flow = Flow("pyd_without")
    with pytest.raises(FlowDefinitionError) as caught:
        flow.step("split")(flows.split)
    message = str(caught.value)
    assert message.startswith(
        "step 'split' of flow 'pyd_without': the input parameter 'order' is annotated with "
        "`Order`, and msgspec cannot build `Order` from JSON; "
    )
    assert "pgflow-pydantic" in message
    assert message.endswith("(no type adapter handles `Order`; type adapters: none)")
    # msgspec's types still need no plugin
    flow.step("plain")(lambda value: value)


def test_the_plugin_is_listed_with_what_it_registers() -> None:
    (info,) = [info for info in plugins.describe_plugins() if info.type_adapters]
    assert info.type_adapters == ("pydantic",)
    assert info.serializers == ("pydantic",)
    assert info.error is None
    assert set(plugins.available_type_adapters()) == {"pydantic"}


def test_the_steps_keep_their_annotations_as_input_types() -> None:
    assert flows.orders.get_step("split").input_type is Order
    assert flows.orders.get_step("price").input_type is Line


def test_check_run_input_without_a_database() -> None:
    flows.orders.check_run_input(ORDER.model_dump_json().encode())
    with pytest.raises(InputValidationError, match=r"`\$\.items\[0\]\.qty`"):
        flows.orders.check_run_input(json.dumps(BAD_ORDER).encode())
    with pytest.raises(InputValidationError, match="Invalid JSON"):
        flows.orders.check_run_input(b"{not json")


def test_a_step_converts_values_and_keeps_models_it_is_given() -> None:
    step = flows.orders.get_step("price")
    line = Line(order_id=ORDER_ID, sku="a", qty=2, unit_price=Decimal(3))
    assert step.convert_input(line) is line  # what a worker's job already built
    built = step.convert_input({"order_id": str(ORDER_ID), "sku": "a", "qty": 2, "unit_price": 3})
    assert built == line
    assert step.invoke(built) == PricedLine(order_id=ORDER_ID, sku="a", total=Decimal(6))
    with pytest.raises(InputValidationError, match=r"Field required - at `\$\.qty`"):
        step.convert_input({"order_id": str(ORDER_ID), "sku": "a", "unit_price": 3})


# -- the type adapter -----------------------------------------------------------------------------


def test_the_type_adapter_builds_annotations_with_models() -> None:
    types = pgflow_pydantic.PydanticTypes()
    for annotation, raw, expected in [
        (
            list[Item],
            b'[{"sku": "a", "qty": 1, "unit_price": "2"}]',
            [Item(sku="a", qty=1, unit_price=Decimal(2))],
        ),
        (Item | None, b"null", None),
        (
            dict[str, Item],
            b'{"x": {"sku": "a", "qty": 1, "unit_price": 2}}',
            {"x": Item(sku="a", qty=1, unit_price=Decimal(2))},
        ),
    ]:
        converter = types.input_converter(annotation)
        assert converter is not None
        assert converter.from_json(raw) == expected
        assert converter.from_value(json.loads(raw)) == expected


class Later(pydantic.BaseModel):
    part: Undefined  # type: ignore[name-defined]  # noqa: F821


def test_a_model_that_is_not_fully_defined_fails_when_the_step_is_defined() -> None:
    flow = Flow("pyd_later")
    with pytest.raises(FlowDefinitionError) as caught:

        @flow.step()
        def use(value: Later) -> None:
            return None

    assert "type adapter 'pydantic': PydanticUndefinedAnnotation" in str(caught.value)
    assert "Undefined" in str(caught.value)


def test_the_type_adapter_leaves_classes_pydantic_does_not_know() -> None:
    class Opaque:
        pass

    types = pgflow_pydantic.PydanticTypes()
    assert types.input_converter(Opaque) is None
    assert types.output_encoder(Opaque) is None


def test_validation_errors_name_each_field_on_one_line() -> None:
    converter = pgflow_pydantic.PydanticTypes().input_converter(list[Order])
    assert converter is not None
    with pytest.raises(pgflow_pydantic.PydanticInputError) as caught:
        converter.from_json(json.dumps([BAD_ORDER]).encode())
    assert str(caught.value) == BAD_REASON.replace("$.items", "$[0].items")
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)
    many = [{"sku": str(n), "qty": 0, "unit_price": 1} for n in range(7)]
    with pytest.raises(ValueError) as caught:
        converter.from_value([{"order_id": str(ORDER_ID), "placed": "2026-01-01", "items": many}])
    assert str(caught.value).endswith("- at `$[0].items[4].qty`; and 2 more")
    with pytest.raises(ValueError, match="Invalid JSON"):
        converter.from_json(b"[")


def test_the_default_encoder_writes_models_through_the_type_adapter() -> None:
    summary = Summary(order_id=ORDER_ID, skus=["a"], grand_total=Decimal("1.5"))
    written = codec.encode_value({"one": summary, "many": [summary], "n": 1})
    assert json.loads(written) == {
        "one": {"order_id": str(ORDER_ID), "skus": ["a"], "grand_total": "1.5"},
        "many": [{"order_id": str(ORDER_ID), "skus": ["a"], "grand_total": "1.5"}],
        "n": 1,
    }
    assert flows.orders.get_step("total").to_builtins([summary]) == [
        {"order_id": str(ORDER_ID), "skus": ["a"], "grand_total": "1.5"}
    ]

    class Opaque:
        pass

    with pytest.raises(codec.UnencodableValue, match="type Opaque is unsupported"):
        codec.encode_value({"x": Opaque()})


# -- the serializer -------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(msgspec.Struct):
    a: int
    b: str


def test_the_serializer_writes_what_the_default_writes_and_models() -> None:
    serializer = plugins.get_serializer("pydantic")
    assert isinstance(serializer, pgflow_pydantic.PydanticSerializer)
    value = {
        "model": Item(sku="a", qty=1, unit_price=Decimal("2.50")),
        "when": PLACED,
        "day": date(2026, 3, 29),
        "id": ORDER_ID,
        "amount": Decimal("1.10"),
        "color": Color.RED,
        "point": Point(1, 2),
        "pair": Pair(1, "x"),
        "nan": float("nan"),
    }
    written = serializer.encode(value)
    expected = {
        "model": {"sku": "a", "qty": 1, "unit_price": "2.50"},
        "when": "2026-03-29T01:30:00Z",
        "day": "2026-03-29",
        "id": str(ORDER_ID),
        "amount": "1.10",
        "color": "red",
        "point": {"x": 1, "y": 2},
        "pair": {"a": 1, "b": "x"},
        "nan": None,
    }
    assert json.loads(written) == expected
    # plain JSON values back, as pgflow's default reads them
    assert serializer.decode(written) == expected
    assert serializer.decode(written.decode()) == codec.decode_json(written)
