"""Raw SQL: DB-API cursors, text(), exec_driver_sql(), f-strings and concatenations."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text

log = logging.getLogger(__name__)
TABLE = "orders"
SCHEMA = "app"


def close_order(cur: Any, order_id: int) -> None:
    """Example in a docstring is never run: UPDATE orders SET status = 'closed' WHERE id = 1."""
    cur.execute("UPDATE orders SET status = %s WHERE id = %s", ("closed", order_id))  # bypass: orders


def create_order(conn: sa.Connection, order_id: int) -> None:
    conn.execute(text('INSERT INTO "orders" (id, customer_id) VALUES (:id, 1)'), {"id": order_id})  # bypass: orders


def purge(conn: sa.Connection, order_id: int) -> None:
    conn.exec_driver_sql("DELETE FROM public.orders WHERE id = %s", (order_id,))  # bypass: orders


def purge_by_name(conn: sa.Connection, order_id: int) -> None:
    conn.execute(text(f"DELETE FROM {TABLE} WHERE id = :id"), {"id": order_id})  # bypass: orders


def rename(conn: sa.Connection, where: str) -> None:
    sql = "UPDATE Customers SET name = upper(name) " + where  # bypass: customers
    conn.execute(text(sql))


def mysql_upsert(cur: Any, rows: list[tuple[int, str]]) -> None:
    cur.executemany(f"INSERT INTO {SCHEMA}.`orders` (id, status) VALUES (%s, %s) "  # bypass: orders
                    "ON DUPLICATE KEY UPDATE status = VALUES(status)", rows)


def pg_upsert(cur: Any, order_id: int) -> None:
    cur.execute(
        """INSERT INTO orders (id, status) VALUES (%s, 'open') -- bypass: orders
           ON CONFLICT (id) DO UPDATE SET status = excluded.status""",
        (order_id,),
    )


def replace_and_truncate(cur: Any) -> None:
    cur.execute("REPLACE INTO [orders] (id, status) VALUES (1, 'x')")  # bypass: orders
    cur.execute("TRUNCATE TABLE customers")  # bypass: customers


def fixup(conn: sa.Connection) -> None:
    conn.execute(text("DELETE FROM orders WHERE id = 0"))  # dualwrite: ignore (a one-off fix, mirrored by hand)


def reads_and_other_tables(conn: sa.Connection, cur: Any) -> None:
    conn.execute(text("SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers)"))
    conn.execute(text("SELECT id FROM orders WHERE status = 'open' FOR UPDATE"))
    cur.execute("INSERT INTO orders_archive SELECT * FROM orders WHERE status = 'closed'")
    cur.execute("UPDATE orders_archive SET status = 'old' WHERE id IN (SELECT id FROM orders)")
    cur.execute("DELETE FROM customers_backup WHERE id NOT IN (SELECT id FROM customers)")
    cur.execute("SELECT replace(status, 'a', 'b') FROM orders")
    log.warning("update orders failed; delete customers later")
