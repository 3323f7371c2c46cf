"""Writes through the adapter: the Core API, and statements of its own inside a unit of work."""

from __future__ import annotations

from sqlalchemy import text

from dualwrite.adapter import DualWriter

from .models import orders_t


def through_the_writer(writer: DualWriter) -> None:
    key = writer.insert("orders", {"customer_id": 1, "status": "open"})
    writer.update("orders", key, {"status": "paid"})
    writer.upsert("customers", {"id": 1, "name": "a"})
    writer.delete("orders", key)


def own_sql_with_touch(writer: DualWriter, order_id: int) -> None:
    with writer.unit_of_work() as uow:
        uow.update("orders", order_id, {"status": "paid"})
        uow.connection.execute(text("UPDATE orders SET total = 0 WHERE id = :id"), {"id": order_id})
        uow.connection.execute(orders_t.update().where(orders_t.c.id == order_id).values(status="x"))
        uow.touch("orders", order_id)


def own_sql_without_touch(writer: DualWriter, customer_id: int) -> None:
    with writer.unit_of_work() as uow:
        uow.connection.execute(text("DELETE FROM customers WHERE id = :id"), {"id": customer_id})  # bypass: customers
