"""SQLAlchemy Core on Tables: never mirrored (the ORM hook sees statements on ORM entities only)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql

from .models import Order, archive_t, customers_t, orders_t


def import_orders(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
    conn.execute(insert(orders_t), rows)  # bypass: orders
    conn.execute(orders_t.update().where(orders_t.c.status == "new").values(status="open"))  # bypass: orders
    conn.execute(sa.delete(Order.__table__).where(Order.__table__.c.id < 0))  # bypass: orders


def upsert_customer(conn: sa.Connection, cid: int) -> None:
    stmt = postgresql.insert(customers_t).values(id=cid, name="x")  # bypass: customers
    conn.execute(stmt.on_conflict_do_nothing())


def fine(conn: sa.Connection) -> None:
    conn.execute(insert(archive_t).from_select(["id", "status"], select(orders_t.c.id, orders_t.c.status)))
    conn.execute(update(archive_t).values(status="old"))
    conn.execute(delete(archive_t))
    conn.execute(select(orders_t).where(orders_t.c.id == 1))
