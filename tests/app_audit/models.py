"""ORM models and Core tables of the test application."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ARCHIVE = "orders_archive"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(20), default="open")
    total: Mapped[int] = mapped_column(default=0)


class RushOrder(Order):
    """Single-table inheritance: a RushOrder is a row of ``orders`` too."""

    rush: Mapped[bool] = mapped_column(default=False, nullable=True)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = {"schema": "public"}  # noqa: RUF012 - SQLAlchemy's declarative attribute
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))


class OrderArchive(Base):
    __tablename__ = ARCHIVE
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


# Core tables for the reporting and import jobs (their own MetaData: the ORM's already has these names)
core = sa.MetaData()
orders_t = sa.Table("orders", core, sa.Column("id", sa.Integer, primary_key=True), sa.Column("status", sa.String))
archive_t = sa.Table(ARCHIVE, core, sa.Column("id", sa.Integer, primary_key=True), sa.Column("status", sa.String))
customers_t = sa.Table("Customers", core, sa.Column("id", sa.Integer, primary_key=True), schema="public")
