"""One side of a table mapping on a SQL store: the SQL kind's :class:`~dualwrite.stores.MappedTable`.

Statements come from :mod:`dualwrite.sqlgen` and run on the raw DBAPI connection through
:mod:`dualwrite.rows`; keys arrive in normal form and are adapted to the driver here (a text UUID
becomes a ``uuid.UUID`` for a PostgreSQL uuid column, stays text for MariaDB's CHAR(36)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from dualwrite import rows as rowio
from dualwrite import sqlgen
from dualwrite.mapping import TableMapping
from dualwrite.sqlgen import Side, source_side, target_side
from dualwrite.store import Dialect, Kind, Store, is_unique_violation
from dualwrite.stores._kind import Key, Role, Row, normal_key
from dualwrite.stores.sql import _checksums
from dualwrite.stores.sql._readers import CanonReader, fetch_and_end, source_reader, target_reader

#: key kinds whose driver values differ from their normal form (UUID objects, memoryview, aware datetimes)
_NEEDS_NORMAL = frozenset({Kind.UUID, Kind.BYTES, Kind.TIMESTAMP, Kind.TIMESTAMPTZ})


class SqlTable:
    """A mapping's source or target table on one SQL store."""

    def __init__(self, store: Store, mapping: TableMapping, role: Role) -> None:
        self.store, self.mapping, self.role = store, mapping, role
        self.side: Side = source_side(mapping, store) if role is Role.SOURCE else target_side(mapping, store)
        self._positions = mapping.key_positions
        self._normalise = any(k in _NEEDS_NORMAL for k in self.side.key_kinds)

    def __repr__(self) -> str:
        return f"SqlTable({self.store.name!r}, {self.side.table!r}, {self.role.value})"

    # -- keys --------------------------------------------------------------------------------------------

    def driver_key(self, key: Key) -> Key:
        """A normal key as this side's driver compares it with the key columns."""
        return rowio.adapt_key(key, self.side.key_kinds, self.store.dialect)

    def bound(self, key: Key | None) -> Key | None:
        return None if key is None else self.driver_key(key)

    def row_key(self, row: Row) -> Key:
        return normal_key(rowio.key_of(row, self._positions))

    # -- reading rows ------------------------------------------------------------------------------------

    def read_range(self, conn: Any, lo: Key | None, hi: Key | None, *, lock: bool = False) -> list[Row]:
        return rowio.read_range(conn, self.mapping, self.side, self.bound(lo), self.bound(hi), lock=lock)

    def read_keys(self, conn: Any, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
        return rowio.read_keys(conn, self.mapping, self.side, [self.driver_key(k) for k in keys], lock=lock)

    def stored_rows(self, conn: Any, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        if not keys:
            return {}
        info = self.mapping.source_info if self.role is Role.SOURCE else self.mapping.target_info
        names = list(info.columns)
        side = self.side
        where, params = side.keys_predicate([self.driver_key(k) for k in keys])
        sql = f"SELECT {', '.join(self.store.quote(c) for c in names)} FROM {side.qtable} WHERE {where}"
        found = rowio.fetch(conn, sql, params)
        conn.rollback()
        positions = [names.index(k) for k in side.key]
        return {normal_key(tuple(r[p] for p in positions)): dict(zip(names, r, strict=True)) for r in found}

    # -- writing rows ------------------------------------------------------------------------------------

    def upsert(self, conn: Any, rows: list[Row], *, insert_only: bool, only_if_newer: bool) -> None:
        rowio.write_rows(conn, self.mapping, self.side, rows, insert_only=insert_only, only_if_newer=only_if_newer)

    def insert_chunk(self, conn: Any, rows: list[Row], *, insert_only: bool) -> tuple[int, bool]:
        if self.store.dialect is Dialect.POSTGRESQL and rows:
            # optimistic: most chunks meet no live write, and a plain COPY is several times cheaper
            try:
                return rowio.pg_copy_rows(conn, self.mapping, self.side, rows), False
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
            conn.rollback()
            self.upsert(conn, rows, insert_only=insert_only, only_if_newer=True)
            return len(rows), True
        self.upsert(conn, rows, insert_only=insert_only, only_if_newer=True)
        return len(rows), False

    def delete(self, conn: Any, keys: Sequence[Key]) -> int:
        return rowio.delete_keys(conn, self.side, keys)  # adapts the keys itself

    # -- walking keys ------------------------------------------------------------------------------------

    def nth_key(self, conn: Any, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        found = rowio.fetch(conn, *sqlgen.nth_key_sql(self.side, self.bound(lo), self.bound(hi), offset))
        if not found:
            return None
        return normal_key(found[0]) if self._normalise else tuple(found[0])

    def every_nth_key(self, conn: Any, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
        side = self.side
        where, params = side.range_predicate(self.bound(lo), self.bound(hi))
        keys = side.key_list()
        sql = (f"SELECT {keys} FROM (SELECT {keys}, ROW_NUMBER() OVER (ORDER BY {side.order_by()}) AS dw_rn "
               f"FROM {side.qtable} WHERE {where}) dw_sub WHERE MOD(dw_rn, {int(step)}) = 0 ORDER BY dw_rn")
        found = fetch_and_end(conn, self.store.dialect, sql, params)
        return [normal_key(r) if self._normalise else tuple(r) for r in found]

    def range_keys(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        side = self.side
        where, params = side.range_predicate(self.bound(lo), self.bound(hi))
        sql = f"SELECT {side.key_list()} FROM {side.qtable} WHERE {where} ORDER BY {side.order_by()}"
        keys = rowio.fetch(conn, sql, params)
        return [normal_key(k) for k in keys] if self._normalise else keys

    def key_digest(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
        return _checksums.key_digest(conn, self.side, self.bound(lo), self.bound(hi))

    # -- canonical rows ----------------------------------------------------------------------------------

    @cached_property
    def reader(self) -> CanonReader:
        make: Callable[[TableMapping, Store], CanonReader] = (
            source_reader if self.role is Role.SOURCE else target_reader)
        return make(self.mapping, self.store)

    def canonical_range(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        return self.reader.read(conn, *self.reader.range_sql(self.bound(lo), self.bound(hi)))

    def canonical_keys(self, conn: Any, keys: Sequence[Key]) -> tuple[list[Row], list[Row]]:
        return self.reader.read(conn, *self.reader.keys_sql([self.driver_key(k) for k in keys]))
