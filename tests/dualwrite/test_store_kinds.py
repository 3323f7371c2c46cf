"""Store kinds as plug-ins: the registry, the SQL kind's facts, and a non-SQL kind through the same seam.

The in-memory key-value kind below holds one dict per table (normal key -> row in target column order),
the shape a Redis kind takes ([T2-6]: one hash per row under a key template). Copy, mirror, verification
and shadow reads run against it unchanged, which is what the protocol promises: nothing SQL crosses it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pytest

from dualwrite.backfill_copy import copy_range
from dualwrite.canonical import canonical_row
from dualwrite.errors import StoreError
from dualwrite.mapping import TableMapping, identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.shadow import kind_rows_reader
from dualwrite.store import Store
from dualwrite.stores import (
    Capabilities,
    CopyRoute,
    Key,
    MappedTable,
    RangeChecksum,
    Role,
    Row,
    kind_for,
    normal_key,
    register_kind,
)
from dualwrite.stores.sql import SQL
from dualwrite.verify import DiffKind, verify_keys, verify_range

# -- an in-memory key-value kind -------------------------------------------------------------------------


class MemStore:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ref = types.SimpleNamespace(name=name, url=f"memkv://{name}")
        self.tables: dict[str, dict[Key, Row]] = {}


class MemConn:
    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _inside(key: Key, lo: Key | None, hi: Key | None) -> bool:
    return (lo is None or key > tuple(lo)) and (hi is None or key <= tuple(hi))


class MemTable:
    def __init__(self, store: MemStore, mapping: TableMapping, role: Role) -> None:
        self.role = role
        table = mapping.source_table if role is Role.SOURCE else mapping.target_table
        self.rows = store.tables.setdefault(table, {})
        self.positions = mapping.key_positions
        self.names = mapping.target_columns
        self.version = mapping.version_position
        info = mapping.target_info
        self.kinds = [info.columns[c].kind for c in self.names]
        self.scales = [info.columns[c].scale for c in self.names]

    def _keys(self, lo: Key | None, hi: Key | None) -> list[Key]:
        return [k for k in sorted(self.rows) if _inside(k, lo, hi)]

    def read_range(self, conn: Any, lo: Key | None, hi: Key | None, *, lock: bool = False) -> list[Row]:
        return [self.rows[k] for k in self._keys(lo, hi)]

    def read_keys(self, conn: Any, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
        return [self.rows[normal_key(k)] for k in keys if normal_key(k) in self.rows]

    def row_key(self, row: Row) -> Key:
        return normal_key(tuple(row[p] for p in self.positions))

    def stored_rows(self, conn: Any, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        return {k: dict(zip(self.names, r, strict=True)) for k, r in
                ((normal_key(k), self.rows.get(normal_key(k))) for k in keys) if r is not None}

    def upsert(self, conn: Any, rows: list[Row], *, insert_only: bool, only_if_newer: bool) -> None:
        for row in rows:
            key, old = self.row_key(row), self.rows.get(self.row_key(row))
            if old is not None and insert_only:
                continue
            v = self.version
            if old is not None and only_if_newer and v is not None and old[v] >= row[v]:
                continue
            self.rows[key] = tuple(row)

    def insert_chunk(self, conn: Any, rows: list[Row], *, insert_only: bool) -> tuple[int, bool]:
        conflicted = any(self.row_key(r) in self.rows for r in rows)
        self.upsert(conn, rows, insert_only=insert_only, only_if_newer=True)
        return len(rows), conflicted

    def delete(self, conn: Any, keys: Sequence[Key]) -> int:
        return sum(self.rows.pop(normal_key(k), None) is not None for k in keys)

    def nth_key(self, conn: Any, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        keys = self._keys(lo, hi)
        return keys[offset] if offset < len(keys) else None

    def every_nth_key(self, conn: Any, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
        return self._keys(lo, hi)[step - 1::step]

    def range_keys(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        return self._keys(lo, hi)

    def key_digest(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
        return None

    def _canonical(self, rows: list[Row]) -> tuple[list[Row], list[Row]]:
        return rows, [canonical_row(r, self.kinds, self.scales) for r in rows]

    def canonical_range(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        return self._canonical(self.read_range(conn, lo, hi))

    def canonical_keys(self, conn: Any, keys: Sequence[Key]) -> tuple[list[Row], list[Row]]:
        return self._canonical(self.read_keys(conn, keys))


class MemKind:
    name = "memkv"

    def capabilities(self, store: Any) -> Capabilities:
        return Capabilities(transactions=False, row_locks=False, skip_locked=False, native_upsert=True,
                            range_reads=True, concurrent_writers=True, sampling=False, row_estimate=True)

    def connect(self, store: Any) -> AbstractContextManager[Any]:
        return contextlib.nullcontext(MemConn())

    def table(self, store: Any, mapping: TableMapping, role: Role) -> MappedTable:
        return MemTable(store, mapping, role)

    def row_estimate(self, store: Any, table: str) -> int | None:
        return len(store.tables.get(table, {}))

    def plan_bounds(self, store: Any, mapping: TableMapping, total: int, ranges: int,
                    on_bound: Callable[[int], None] | None = None) -> list[Key]:
        return []

    def pair_checksums(self, source: Any, target: Any, mapping: TableMapping
                       ) -> tuple[RangeChecksum, RangeChecksum] | None:
        return None

    def copy_routes(self, source: Any, target: Any, mapping: TableMapping) -> list[CopyRoute]:
        return []

    def is_transient(self, exc: BaseException) -> bool:
        return False

    def scrub_error(self, exc: BaseException, what: str) -> BaseException:
        return exc


MEM = MemKind()


@pytest.fixture
def mem() -> MemStore:
    register_kind("memkv", MEM)
    return MemStore("kv")


def sql(store: Store, *statements: str) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in statements:
            cur.execute(s)
        cur.close()
        conn.commit()


# -- the registry ----------------------------------------------------------------------------------------


def test_sql_stores_are_served_by_the_sql_kind(pg_old: Store, my_old: Store, sqlite_old: Store) -> None:
    assert kind_for(pg_old) is SQL and kind_for(my_old) is SQL and kind_for(sqlite_old) is SQL
    assert SQL.capabilities(pg_old).row_locks and SQL.capabilities(pg_old).skip_locked
    assert not SQL.capabilities(sqlite_old).concurrent_writers  # one writer: the copy does not overlap checks
    assert not SQL.capabilities(sqlite_old).row_locks


def test_an_unknown_scheme_is_refused_with_the_known_ones() -> None:
    stranger = types.SimpleNamespace(name="x", ref=types.SimpleNamespace(url="carrier-pigeon://loft/1"))
    with pytest.raises(StoreError, match="no store kind serves 'carrier-pigeon'"):
        kind_for(stranger)


# -- a key-value kind through the same seam ----------------------------------------------------------------


def test_copy_mirror_verify_and_shadow_reads_reach_a_key_value_kind(
        pg_old: Store, mem: MemStore, table_name: str) -> None:
    sql(pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, v varchar(40), version bigint NOT NULL)",
        f"INSERT INTO {table_name} SELECT g, 'row ' || g, 1 FROM generate_series(1, 50) g")
    info = pg_old.describe(table_name)
    mapping = identity_mapping(info, info, version="version", batch_size=7)

    prog = copy_range(pg_old, mem, mapping)  # type: ignore[arg-type] # a store of another kind
    assert prog.done and prog.rows == 50 and prog.extra["route"] == "generic" and prog.fixed_keys == 0
    assert mem.tables[table_name][(3,)] == (3, "row 3", 1)
    assert verify_range(pg_old, mem, mapping).ok  # type: ignore[arg-type]

    sql(pg_old, f"UPDATE {table_name} SET v = 'changed' WHERE id = 4", f"DELETE FROM {table_name} WHERE id = 5")
    report = verify_range(pg_old, mem, mapping, chunk_size=10)  # type: ignore[arg-type]
    assert {(d.key, d.kind) for d in report.differences} == {((4,), DiffKind.FIELD), ((5,), DiffKind.EXTRA)}

    result = mirror_keys(pg_old, mem, mapping, report.keys())  # type: ignore[arg-type]
    assert (result.upserted, result.deleted) == (1, 1)
    assert verify_keys(pg_old, mem, mapping, [(4,), (5,)]).ok  # type: ignore[arg-type]
    assert verify_range(pg_old, mem, mapping).ok  # type: ignore[arg-type]

    read = kind_rows_reader({"old": pg_old, "new": mem}, {table_name: mapping})
    assert read(table_name, "old", [(4,), (5,)]) == {(4,): {"id": 4, "v": "changed", "version": 1}}
    assert read(table_name, "new", [(4,), (6,)]) == {(4,): {"id": 4, "v": "changed", "version": 1},
                                                     (6,): {"id": 6, "v": "row 6", "version": 1}}
