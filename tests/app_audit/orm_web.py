"""The web application's ORM code: its sessions come from the installed sessionmaker (no findings)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .db import SessionLocal, web_session
from .models import Customer, Order


def place(customer_id: int) -> int:
    with SessionLocal.begin() as session:
        order = Order(customer_id=customer_id)
        session.add(order)
        session.flush()
        return order.id


def pay(order_id: int) -> None:
    with SessionLocal() as s:
        order = s.get(Order, order_id)
        assert order is not None
        order.status = "paid"
        s.execute(update(Order).where(Order.id == order_id).values(total=0))
        s.query(Customer).filter(Customer.id == order.customer_id).update({"name": "paid"})
        s.commit()


def rename(customer_id: int, name: str) -> None:
    customer = web_session.get(Customer, customer_id)
    if customer is not None:
        customer.name = name
    web_session.commit()


def cancel(session: Session, order: Order) -> None:
    """A session handed in by the framework: the tree installs dualwrite, so it is taken as hooked."""
    order.status = "cancelled"
    for o in session.scalars(select(Order).where(Order.customer_id == order.customer_id)):
        o.status = "cancelled"
    session.delete(order)
