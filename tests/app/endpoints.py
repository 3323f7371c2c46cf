"""The application's endpoints: ordinary ORM code, unaware of any migration."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from app.models import Models

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, 123456)


class Shop:
    def __init__(self, models: Models, sessions: sessionmaker[Session]) -> None:
        self.m = models
        self.sessions = sessions

    def signup(self, tenant: str, name: str, email: str | None = None) -> int:
        with self.sessions() as s, s.begin():
            c = self.m.Customer(tenant=tenant, name=name, email=email, created_at=NOW)
            s.add(c)
            s.add(self.m.Audit(tenant=tenant, message=f"signup {name}"))
            s.flush()
            return int(c.id)

    def rename(self, customer_id: int, name: str) -> None:
        with self.sessions() as s, s.begin():
            c = s.get(self.m.Customer, customer_id)
            assert c is not None
            c.name = name

    def deposit(self, customer_id: int, amount: Decimal) -> Decimal:
        with self.sessions() as s, s.begin():
            c = s.get(self.m.Customer, customer_id)
            assert c is not None
            c.balance = c.balance + amount
            return Decimal(c.balance)

    def place_order(self, customer_id: int, total: Decimal, note: str | None = None) -> int:
        with self.sessions() as s, s.begin():
            c = s.get(self.m.Customer, customer_id)
            assert c is not None
            o = self.m.Order(customer_id=customer_id, tenant=c.tenant, total=total, note=note)
            s.add(o)
            c.balance = c.balance - total
            s.flush()
            return int(o.id)

    def ship(self, order_id: int) -> None:
        with self.sessions() as s, s.begin():
            o = s.get(self.m.Order, order_id)
            assert o is not None
            o.status = "shipped"

    def cancel_order(self, order_id: int) -> None:
        with self.sessions() as s, s.begin():
            o = s.get(self.m.Order, order_id)
            if o is not None:
                s.delete(o)

    def close_account(self, customer_id: int) -> None:
        """Deletes the customer and, with an ORM bulk DELETE, every order of theirs."""
        with self.sessions() as s, s.begin():
            s.execute(sa.delete(self.m.Order).where(self.m.Order.customer_id == customer_id))
            c = s.get(self.m.Customer, customer_id)
            if c is not None:
                s.delete(c)
            s.add(self.m.Audit(tenant=c.tenant if c else "?", message=f"closed {customer_id}"))

    def discount_open_orders(self, tenant: str, percent: int) -> None:
        """An ORM bulk UPDATE by criteria."""
        with self.sessions() as s, s.begin():
            s.execute(sa.update(self.m.Order).where(self.m.Order.tenant == tenant, self.m.Order.status == "open")
                      .values(total=self.m.Order.total * (100 - percent) / 100))

    def get_customer(self, customer_id: int) -> dict[str, Any] | None:
        with self.sessions() as s:
            c = s.get(self.m.Customer, customer_id)
            return None if c is None else {"id": c.id, "name": c.name, "balance": c.balance, "version": c.version}

    def list_orders(self, customer_id: int) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(sa.select(self.m.Order).where(self.m.Order.customer_id == customer_id)
                             .order_by(self.m.Order.id)).all()
            return [{"id": o.id, "total": o.total, "status": o.status} for o in rows]


def scenario(shop: Shop, tenant: str) -> dict[str, list[int]]:
    """A few endpoints' worth of reads and writes; returns the keys it wrote, per table."""
    a = shop.signup(tenant, "Ada", "ada@example.com")
    b = shop.signup(tenant, "Bob")
    shop.rename(a, "Ada L.")
    shop.deposit(a, Decimal("100.50"))
    o1 = shop.place_order(a, Decimal("10.25"), note="first")
    o2 = shop.place_order(a, Decimal("5.00"))
    o3 = shop.place_order(b, Decimal("7.77"))
    shop.ship(o1)
    shop.cancel_order(o2)
    shop.discount_open_orders(tenant, 10)
    c = shop.signup(tenant, "Cy")
    o4 = shop.place_order(c, Decimal("1.00"))
    shop.close_account(c)
    assert shop.get_customer(a) is not None
    assert [o["id"] for o in shop.list_orders(a)] == [o1]
    return {"customers": [a, b, c], "orders": [o1, o2, o3, o4]}
