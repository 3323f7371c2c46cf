"""[T2-7] Bypass capture on the store itself (PostgreSQL and MariaDB): writes through the adapter's Core unit of
work, its ORM integration and dualwrite's own replica sessions are not recorded; a raw write on the very same
pooled connection right after an adapter transaction is, with the writer's identity, and its key reaches the
repair queue."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import create_my, create_pg, execute, fetch_all, spec_for
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from dualwrite import bypass, control
from dualwrite.adapter import AdapterOptions, DualWriter, install
from dualwrite.config import StoreRef
from dualwrite.store import Dialect, Kind, Store
from dualwrite.triggers import mark_replica


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>my_new"])
def test_only_writes_that_bypass_the_adapter_are_recorded(
        request: pytest.FixtureRequest, pair: str, table_name: str, databases: Any) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    mk = create_pg if old.dialect is Dialect.POSTGRESQL else create_my
    mk(old, table_name, 20)
    mk(new, table_name, 20)
    name = f"bpc-{table_name[-4:]}"
    spec = spec_for(name, old.name, new.name, table_name, strategy="sync")
    control.ensure_schema(old)
    control.publish_state(old, name, "DUAL_WRITE", 1)
    url = old.engine.url.render_as_string(hide_password=False)
    app = Store(StoreRef(old.name, url), pool_size=1)  # one connection: adapter and raw path share it
    replica = Store(StoreRef(old.name, url), pool_size=1)
    mark_replica(replica)
    databases.stores += [app, replica]
    bypass.install(old, name, table_name, table_name, ["id"])
    assert bypass.installed(old, name, table_name)
    writer = DualWriter(spec, app, new, options=AdapterOptions(background=False, phase_ttl=0.01, pool_size=1))

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(200))
        version: Mapped[int] = mapped_column(sa.BigInteger)

    maker = sessionmaker(bind=app.engine)
    install(maker, writer)
    try:
        writer.update(table_name, 1, {"name": "core"})
        execute(app, f"UPDATE {table_name} SET name = 'raw' WHERE id = 2")  # same pooled connection
        with maker() as session:
            session.get(Item, 3).name = "orm"  # type: ignore[union-attr]
            session.commit()
        execute(app, f"DELETE FROM {table_name} WHERE id = 4")
        execute(replica, f"UPDATE {table_name} SET name = 'replica' WHERE id = 5")
        with writer.unit_of_work() as uow:
            uow.update(table_name, 6, {"name": "uow"})
            uow.connection.exec_driver_sql(f"UPDATE {table_name} SET name = 'uow-raw' WHERE id = 7")
            uow.touch(table_name, 7)  # a statement of its own inside the adapter's transaction: not a bypass
        execute(app, f"INSERT INTO {table_name} (id, name, version) VALUES (50, 'raw-insert', 1)")

        groups = bypass.collect(old, old, name, {table_name: [Kind.INT]}, authoritative="old")
        # MariaDB names the connection: a pool that reconnected shows the same writer as two identities
        assert {t for t, _w, _n, _at in groups} == {table_name} and sum(n for *_, n, _at in groups) == 3, groups
        writer_id = groups[0][1]
        if old.dialect is Dialect.POSTGRESQL:
            assert writer_id.startswith("app=") and " user=" in writer_id and " client=" in writer_id, writer_id
        else:
            assert writer_id.startswith("user=") and " connection=" in writer_id, writer_id
        queued = sorted(str(r[0]) for r in fetch_all(
            old, f"SELECT key_json FROM {control.REPAIR_QUEUE} WHERE migration = '{name}'"))
        assert queued == ["[2]", "[4]", "[50]"], queued
        assert bypass.collect(old, old, name, {table_name: [Kind.INT]}, authoritative="old") == []
        bypass.remove(old, name, table_name)
        assert not bypass.installed(old, name, table_name)
    finally:
        writer.close()
