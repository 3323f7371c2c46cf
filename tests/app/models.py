"""The application's ORM models, built per test under a table prefix so tests can share databases."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DateTime6 = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


@dataclass
class Models:
    base: type[DeclarativeBase]
    Customer: type
    Order: type
    Audit: type
    customers: str
    orders: str
    audit: str

    @property
    def migrated(self) -> list[sa.Table]:
        return [self.base.metadata.tables[self.customers], self.base.metadata.tables[self.orders]]

    def create(self, old: sa.Engine, new: sa.Engine) -> None:
        """All tables in the old store; only the migrated ones in the new store (same names and columns)."""
        self.base.metadata.create_all(old)
        self.base.metadata.create_all(new, tables=self.migrated)


def make_models(prefix: str) -> Models:
    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = f"{prefix}_customers"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=True)
        tenant: Mapped[str] = mapped_column(sa.String(40), nullable=False)
        name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
        email: Mapped[str | None] = mapped_column(sa.String(200))
        balance: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), nullable=False, default=Decimal("0.00"))
        active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
        created_at: Mapped[dt.datetime] = mapped_column(DateTime6, nullable=False)
        version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)

    class Order(Base):
        __tablename__ = f"{prefix}_orders"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=True)
        customer_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, index=True)
        tenant: Mapped[str] = mapped_column(sa.String(40), nullable=False)
        total: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), nullable=False)
        status: Mapped[str] = mapped_column(sa.String(20), nullable=False, default="open")
        note: Mapped[str | None] = mapped_column(sa.Text)
        version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)

    class Audit(Base):
        __tablename__ = f"{prefix}_audit"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=True)
        tenant: Mapped[str] = mapped_column(sa.String(40), nullable=False)
        message: Mapped[str] = mapped_column(sa.String(400), nullable=False)

    return Models(Base, Customer, Order, Audit, f"{prefix}_customers", f"{prefix}_orders", f"{prefix}_audit")
