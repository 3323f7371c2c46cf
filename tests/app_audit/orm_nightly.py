"""The nightly job: ORM writes through sessions without the dualwrite hook."""

from __future__ import annotations

from sqlalchemy import Engine, delete, update
from sqlalchemy.orm import Session

from .db import NightlySession, SessionLocal
from .models import Customer, Order, OrderArchive, RushOrder


def expire_orders() -> None:
    with NightlySession() as session:
        for order in session.query(Order).filter(Order.status == "open").all():
            order.status = "expired"  # bypass: orders
            session.add(OrderArchive(id=order.id, status="expired"))
        session.add(RushOrder(customer_id=1))  # bypass: orders
        session.bulk_insert_mappings(Customer, [{"id": 1, "name": "a"}])  # bypass: customers
        session.query(Customer).filter(Customer.name == "").delete()  # bypass: customers
        session.execute(update(Order).values(total=0))  # bypass: orders
        session.commit()


def merge_customer(engine: Engine, customer: Customer) -> None:
    with Session(engine) as s:
        s.merge(customer)  # bypass: customers
        s.commit()


def ok_through_installed(order_id: int) -> None:
    with SessionLocal() as s:
        s.execute(delete(Order).where(Order.id == order_id))
        s.commit()


def core_on_a_connection(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Order).where(Order.status == "void"))  # bypass: orders
