"""Flows whose handlers take and return pydantic models, for the plugin's tests. Module level,
importable by "module:attribute", for the process executor's children."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, Field

from pgflow.flow import Flow


class Item(BaseModel):
    sku: str
    qty: int = Field(gt=0)
    unit_price: Decimal


class Order(BaseModel):
    order_id: UUID
    placed: datetime
    items: list[Item]


class Line(BaseModel):
    order_id: UUID
    sku: str
    qty: int
    unit_price: Decimal


class PricedLine(BaseModel):
    order_id: UUID
    sku: str
    total: Decimal


class Prices(BaseModel):
    """The input of `total`: the outputs of the map step `price`, in order."""

    price: list[PricedLine]


class Summary(BaseModel):
    order_id: UUID
    skus: list[str]
    grand_total: Decimal


def split(order: Order) -> list[Line]:
    assert isinstance(order, Order)  # the handler really gets a model
    return [
        Line(order_id=order.order_id, sku=item.sku, qty=item.qty, unit_price=item.unit_price)
        for item in order.items
    ]


def price(line: Line) -> PricedLine:
    assert isinstance(line, Line)
    return PricedLine(order_id=line.order_id, sku=line.sku, total=line.qty * line.unit_price)


def total(prices: Prices) -> dict[str, Summary]:
    # a dict holding a model, as much an output as a model alone
    first = prices.price[0]
    return {
        "summary": Summary(
            order_id=first.order_id,
            skus=[line.sku for line in prices.price],
            grand_total=sum((line.total for line in prices.price), Decimal(0)),
        )
    }


def _orders(slug: str, serializer: str | None = None) -> Flow:
    flow = Flow(slug, max_attempts=3, base_delay=60, serializer=serializer)
    flow.step("split")(split)
    flow.map("price", array="split")(price)
    flow.step("total", depends_on=["price"])(total)
    return flow


#: outputs written by pgflow's default serializer (asking the plugin's type adapter)
orders = _orders("pyd_orders")
#: outputs written by the plugin's serializer
orders_pydantic = _orders("pyd_orders_ser", serializer="pydantic")
