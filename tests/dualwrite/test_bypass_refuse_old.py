"""[T2-7] After write cutover the old store refuses writes that bypass the adapter (PostgreSQL and MariaDB): a raw
write on the application's own engine, even on the very pooled connection the adapter just used, fails with
an error naming the migration and the way out; the adapter's marked transactions and dualwrite's replica
sessions pass; refusals are counted; lifting the refusal lets the raw path write again. SQLite says it cannot.
And the adapter's transaction mark does not mask the error of a connection that died under it."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import create_my, create_pg, execute, fetch_all, spec_for

from dualwrite import bypass, control, triggers
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.store import Dialect, Store
from dualwrite.triggers import mark_replica
from workflows import bypass as bp


def _raw(app: Store, table: str, key: int, name: str) -> None:
    with app.engine.connect() as conn:
        conn.exec_driver_sql(f"UPDATE {table} SET name = %s WHERE id = %s", (name, key))
        conn.commit()


def _name(store: Store, table: str, key: int) -> str:
    return str(fetch_all(store, f"SELECT name FROM {table} WHERE id = {key}")[0][0])


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>my_new"])
def test_old_store_refuses_raw_writes_after_write_cutover(
        request: pytest.FixtureRequest, pair: str, table_name: str, databases: Any) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    mk = create_pg if old.dialect is Dialect.POSTGRESQL else create_my
    mk(old, table_name, 20)
    mk(new, table_name, 20)
    name = f"bro-{table_name[-4:]}"
    spec = spec_for(name, old.name, new.name, table_name, strategy="sync")
    control.ensure_schema(old)
    control.publish_state(old, name, "CUTOVER_WRITES", 1)
    url = old.engine.url.render_as_string(hide_password=False)
    app = Store(StoreRef(old.name, url), pool_size=1)  # one connection: adapter and raw path share it
    replica = Store(StoreRef(old.name, url), pool_size=1)
    mark_replica(replica)
    databases.stores += [app, replica]
    assert bypass.refuse_old(old, name, [table_name]) == ""
    assert bypass.refuse_old(old, name, [table_name]) == ""  # idempotent
    assert triggers.writes_denied(old, name, table_name)
    writer = DualWriter(spec, app, new, options=AdapterOptions(background=False, phase_ttl=0.01, pool_size=1))
    try:
        writer.update(table_name, 1, {"name": "adapter"})  # new first, then the old store: both accepted
        assert _name(old, table_name, 1) == "adapter" and _name(new, table_name, 1) == "adapter"
        with pytest.raises(sa.exc.DBAPIError) as refused:
            _raw(app, table_name, 2, "lost")  # the same pooled connection, right after the adapter's transaction
        text = str(refused.value)
        assert f"dualwrite migration {name}" in text and "write through the dualwrite adapter" in text, text
        assert _name(old, table_name, 2) != "lost"
        with pytest.raises(sa.exc.DBAPIError), app.engine.connect() as conn:
            conn.exec_driver_sql(f"INSERT INTO {table_name} (id, name, version) VALUES (90, 'raw', 1)")
            conn.commit()
        writer.update(table_name, 3, {"name": "adapter-again"})  # the adapter still passes after the refusals
        assert _name(old, table_name, 3) == "adapter-again"
        execute(replica, f"UPDATE {table_name} SET name = 'repair' WHERE id = 4")  # dualwrite's own writes pass
        assert _name(old, table_name, 4) == "repair"
        if old.dialect is Dialect.POSTGRESQL or old.is_mariadb:
            assert bypass.old_refused(old, name, [table_name]) == {table_name: 2}

        bypass.allow_old(old, name, [table_name])  # rollback: the raw path writes again
        assert not triggers.writes_denied(old, name, table_name)
        _raw(app, table_name, 2, "raw-after-rollback")
        assert _name(old, table_name, 2) == "raw-after-rollback"
        bypass.allow_old(old, name, [table_name], final=True)  # CLEANUP / abort: the counters go
        assert bypass.old_refused(old, name, [table_name]) == {}
    finally:
        writer.close()


def test_sqlite_says_it_cannot_refuse(sqlite_old: Store, table_name: str) -> None:
    execute(sqlite_old, f"CREATE TABLE {table_name} (id INTEGER PRIMARY KEY, name TEXT, version INTEGER)")
    why = bypass.refuse_old(sqlite_old, "sq", [table_name])
    assert "not supported on SQLite" in why and "not measured" in why, why
    assert not triggers.writes_denied(sqlite_old, "sq", table_name)
    line = bp.refusal_line(bp.BypassSummary(old_store=why))
    assert line.startswith("old store does not refuse writes that bypass the adapter: not supported on SQLite")


def test_a_dead_connection_under_the_adapter_raises_its_own_error(
        pg_old: Store, pg_new: Store, table_name: str, databases: Any) -> None:
    """The mark's commit / rollback hook must not raise on an invalidated connection: the application sees
    the error that killed the connection, not one about the connection's state."""
    create_pg(pg_old, table_name, 5)
    create_pg(pg_new, table_name, 5)
    name = f"brd-{table_name[-4:]}"
    spec = spec_for(name, pg_old.name, pg_new.name, table_name, strategy="sync")
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, name, "DUAL_WRITE", 1)
    app = Store(StoreRef(pg_old.name, pg_old.engine.url.render_as_string(hide_password=False)), pool_size=1)
    databases.stores.append(app)
    writer = DualWriter(spec, app, pg_new, options=AdapterOptions(background=False, phase_ttl=0.01, pool_size=1))
    try:
        with pytest.raises(sa.exc.OperationalError) as died, writer.unit_of_work() as uow:
            uow.update(table_name, 1, {"name": "first"})
            pid = uow.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            execute(pg_old, f"SELECT pg_terminate_backend({int(pid or 0)})")
            uow.connection.exec_driver_sql(f"UPDATE {table_name} SET name = 'x' WHERE id = 2")
        assert "terminat" in str(died.value) or "closed" in str(died.value), died.value
        writer.update(table_name, 3, {"name": "after"})  # the pool recovers, the adapter writes on
        assert _name(pg_old, table_name, 3) == "after"
    finally:
        writer.close()
