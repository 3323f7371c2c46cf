"""The application keeps its schema while the new store's differs: renamed tables and columns are translated
both ways (writes after write cutover, reads after read cutover); a computed column keeps the sync path on
mirror_keys and makes write cutover impossible, with a clear error."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter, RoutingError, install
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store


def ddl(store: Store, *stmts: str) -> None:
    with store.connect() as conn:
        for s in stmts:
            conn.execute(s)
        conn.commit()


def one(store: Store, sql: str) -> tuple[object, ...] | None:
    with store.connect() as conn:
        row = conn.execute(sql).fetchone()
        conn.rollback()
    return None if row is None else tuple(row)


def test_renamed_schema_is_translated_both_ways(pg_old: Store, pg_new: Store, table_name: str) -> None:
    t, t2 = table_name, f"{table_name}_v2"
    ddl(pg_old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)")
    ddl(pg_new, f"CREATE TABLE {t2} (id bigint PRIMARY KEY, full_name text NOT NULL, version bigint NOT NULL)")
    spec = MigrationSpec(name=f"ren-{t}", old=pg_old.name, new=pg_new.name, strategy="sync", tables=[
        {"source": t, "target": t2, "version_column": "version", "columns": {"full_name": "name"}}])
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "DUAL_WRITE", 1)
    w = DualWriter(spec, pg_old, pg_new, options=AdapterOptions(background=False, phase_ttl=0.01))

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = t
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
        name: Mapped[str] = mapped_column(sa.Text)
        version: Mapped[int] = mapped_column(sa.BigInteger)

    sessions = sessionmaker(bind=pg_old.engine)
    install(sessions, w)
    try:
        w.insert(t, {"id": 1, "name": "a"})
        assert one(pg_new, f"SELECT full_name, version FROM {t2} WHERE id = 1") == ("a", 1)
        with sessions.begin() as s:  # the ORM writes the old store and the image crosses renamed
            s.add(Item(id=2, name="orm"))
        assert one(pg_new, f"SELECT full_name FROM {t2} WHERE id = 2") == ("orm",)
        control.publish_state(pg_old, spec.name, "CUTOVER_READS", 2)
        w.phase.refresh(force=True)
        assert w.read(t, 1) == {"id": 1, "name": "a", "version": 1}  # served by new, in the app's names
        with sessions() as s:  # the ORM cannot read the renamed table: it stays on old
            assert s.get(Item, 2).name == "orm"
        control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 3)
        w.phase.refresh(force=True)
        assert w.update(t, 1, {"name": "b"}) == 1  # written to new (full_name), mirrored back to old (name)
        assert one(pg_new, f"SELECT full_name, version FROM {t2} WHERE id = 1") == ("b", 2)
        assert one(pg_old, f"SELECT name, version FROM {t} WHERE id = 1") == ("b", 2)
        w.delete(t, 2)
        assert one(pg_old, f"SELECT 1 FROM {t} WHERE id = 2") is None
        with pytest.raises(RoutingError, match="renamed"), sessions.begin() as s:
            s.add(Item(id=3, name="after cutover"))
    finally:
        w.close()


def test_computed_column_uses_mirror_keys_and_forbids_write_cutover(pg_old: Store, pg_new: Store,
                                                                   table_name: str) -> None:
    t = table_name
    ddl(pg_old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, first text, last text, version bigint NOT NULL)")
    ddl(pg_new, f"CREATE TABLE {t} (id bigint PRIMARY KEY, full_name text, version bigint NOT NULL)")
    spec = MigrationSpec(name=f"expr-{t}", old=pg_old.name, new=pg_new.name, strategy="sync", tables=[
        {"source": t, "version_column": "version", "columns": {"full_name": {"expr": "first || ' ' || last"}},
         "drop": ["first", "last"]}])
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "DUAL_WRITE", 1)
    w = DualWriter(spec, pg_old, pg_new, options=AdapterOptions(background=False, phase_ttl=0.01))
    try:
        assert w.tables[t].fast[w.route().authoritative] is None  # no image path: SQL computes a column
        w.insert(t, {"id": 1, "first": "Ada", "last": "Lovelace"})
        assert one(pg_new, f"SELECT full_name FROM {t} WHERE id = 1") == ("Ada Lovelace",)
        control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 2)
        w.phase.refresh(force=True)
        with pytest.raises(RoutingError, match="write cutover is not possible"):
            w.update(t, 1, {"first": "Augusta"})
    finally:
        w.close()
