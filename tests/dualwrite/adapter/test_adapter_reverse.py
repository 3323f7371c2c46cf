"""A split column through the adapter: old ``name`` becomes new ``first_name`` + ``last_name``.

Before write cutover the application's writes to the old store are mirrored forward (the split computed
on the way); after it, the application still writes ``name`` in its own schema, the adapter computes the
split in the statement on the new store, and the spec's ``reverse`` rule mirrors the joined name back to
the old store. Reads served by the new store give the application its ``name`` back. PostgreSQL and
MariaDB (whose SQL splits and joins differently), the split in SQL and in Python.
"""

from __future__ import annotations

import pytest

from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter, RoutingError
from dualwrite.adapter.phase import Side
from dualwrite.mirror import mirror_keys
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store


def ddl(store: Store, *stmts: str) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in stmts:
            cur.execute(s)
        conn.commit()


def one(store: Store, sql: str) -> tuple[object, ...] | None:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        row = cur.fetchone()
        conn.rollback()
    return None if row is None else tuple(row)


def first_word(name: str | None) -> str | None:
    return None if name is None else name.split(" ", 1)[0]


def rest_words(name: str | None) -> str | None:
    return None if name is None else name.split(" ", 1)[1] if " " in name else ""


SPLIT_SQL = {"first_name": {"expr": "split_part(name, ' ', 1)"},
             "last_name": {"expr": "substr(name, strpos(name, ' ') + 1)"}}
SPLIT_MY = {"first_name": {"expr": "SUBSTRING_INDEX(name, ' ', 1)"},
            "last_name": {"expr": "SUBSTR(name, INSTR(name, ' ') + 1)"}}
SPLIT_PY = {"first_name": {"from": "name", "transform": "test_adapter_reverse:first_word"},
            "last_name": {"from": "name", "transform": "test_adapter_reverse:rest_words"}}


@pytest.mark.parametrize("engine,how", [("pg", "expr"), ("pg", "transform"), ("mariadb", "expr")])
def test_split_column_is_mirrored_back_joined_after_write_cutover(engine: str, how: str, table_name: str,
                                                                  request: pytest.FixtureRequest) -> None:
    pg_old: Store = request.getfixturevalue("pg_old" if engine == "pg" else "my_old")
    pg_new: Store = request.getfixturevalue("pg_new" if engine == "pg" else "my_new")
    t, t2 = table_name, f"{table_name}_v2"
    split = SPLIT_PY if how == "transform" else SPLIT_SQL if engine == "pg" else SPLIT_MY
    join = "first_name || ' ' || last_name" if engine == "pg" else "CONCAT(first_name, ' ', last_name)"
    ddl(pg_old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text, "
                "version bigint NOT NULL)")
    ddl(pg_new, f"CREATE TABLE {t2} (id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, "
                "email_address text, version bigint NOT NULL)")
    spec = MigrationSpec(name=f"s{engine[0]}{how[0]}-{t}", old=pg_old.name, new=pg_new.name, strategy="sync", tables=[
        {"source": t, "target": t2, "version_column": "version",
         "columns": {**split, "email_address": "email"}, "reverse": {"name": join}}])
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "DUAL_WRITE", 1)
    w = DualWriter(spec, pg_old, pg_new, options=AdapterOptions(background=False, phase_ttl=0.01))
    try:
        rt = w.tables[t]
        assert rt.backward is not None and rt.new.writable
        # the image path computes in Python: a transform takes it, SQL re-reads the row under lock
        assert (rt.fast[Side.OLD] is not None) == (how == "transform") and rt.fast[Side.NEW] is None
        w.insert(t, {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"})
        assert one(pg_new, f"SELECT first_name, last_name, version FROM {t2} WHERE id = 1") == ("Ada", "Lovelace", 1)

        control.publish_state(pg_old, spec.name, "CUTOVER_READS", 2)
        w.phase.refresh(force=True)
        got = w.read(t, 1)  # served by the new store, in the application's schema
        assert got is not None and got["name"] == "Ada Lovelace" and got["email"] == "ada@example.com"

        control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 3)
        w.phase.refresh(force=True)
        # the application writes its schema; the new store gets the split, the old one the joined name
        w.insert(t, {"id": 2, "name": "Grace Brewster Hopper", "email": "grace@example.com"})
        assert one(pg_new, f"SELECT first_name, last_name FROM {t2} WHERE id = 2") == ("Grace", "Brewster Hopper")
        assert one(pg_old, f"SELECT name, email, version FROM {t} WHERE id = 2") == (
            "Grace Brewster Hopper", "grace@example.com", 1)
        assert w.update(t, 1, {"name": "Augusta Ada King"}) == 1
        assert one(pg_new, f"SELECT first_name, last_name, version FROM {t2} WHERE id = 1") == (
            "Augusta", "Ada King", 2)
        assert one(pg_old, f"SELECT name, version FROM {t} WHERE id = 1") == ("Augusta Ada King", 2)
        assert w.update(t, 1, {"email": "a@example.org"}) == 1  # the split is left alone
        assert one(pg_old, f"SELECT name, email, version FROM {t} WHERE id = 1") == (
            "Augusta Ada King", "a@example.org", 3)
        # a write to the new store's own columns (another service on the new schema) goes back joined
        ddl(pg_new, f"UPDATE {t2} SET last_name = 'Lovelace', version = version + 1 WHERE id = 1")
        mirror_keys(pg_new, pg_old, rt.mapping_from(rt.new.side), [(1,)])
        assert one(pg_old, f"SELECT name, version FROM {t} WHERE id = 1") == ("Augusta Lovelace", 4)
        got = w.read(t, 1)
        assert got is not None and got["name"] == "Augusta Lovelace"
        assert w.upsert(t, {"id": 3, "name": "Alan Turing"}) == (3,)
        assert one(pg_old, f"SELECT name FROM {t} WHERE id = 3") == ("Alan Turing",)
        w.delete(t, 2)
        assert one(pg_old, f"SELECT 1 FROM {t} WHERE id = 2") is None
    finally:
        w.close()


def test_split_without_reverse_rule_names_what_is_missing(pg_old: Store, pg_new: Store, table_name: str) -> None:
    t = table_name
    ddl(pg_old, f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)")
    ddl(pg_new, f"CREATE TABLE {t} (id bigint PRIMARY KEY, first_name text, last_name text, "
                "version bigint NOT NULL)")
    spec = MigrationSpec(name=f"norev-{t}", old=pg_old.name, new=pg_new.name, strategy="sync", tables=[
        {"source": t, "version_column": "version", "columns": SPLIT_SQL}])
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 1)
    w = DualWriter(spec, pg_old, pg_new, options=AdapterOptions(background=False, phase_ttl=0.01))
    try:
        with pytest.raises(RoutingError, match=r"computes first_name, last_name from name and has no reverse rule"):
            w.insert(t, {"id": 1, "name": "Ada Lovelace"})
    finally:
        w.close()
