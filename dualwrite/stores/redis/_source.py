"""A table kept in Redis as the *source* side of a mapping: the mirror and the verification new -> old.

After write cutover Redis is authoritative and every write is mirrored back into the old SQL store with the
reversed mapping (:meth:`dualwrite.mapping.TableMapping.reversed`), whose source table is the one kept in
Redis. This side reads the Redis rows as they are kept (an identity mapping of the Redis table over
:class:`~._table.RedisTable`: same keys, same pipelines, same SCAN walk) and turns each into the mapping's
target row: plain columns renamed, constants, Python transforms (an SQL ``expr`` cannot run on Redis;
preflight refuses one in a reverse rule). Values come back from their canonical text as the Python values a
SQL driver takes (``Decimal``, ``datetime``: :func:`dualwrite.keyvalue.encoding.native_value`).
Redis has no row locks: a read "under lock" is a plain read,
so :func:`dualwrite.mirror.mirror_keys` re-reads the Redis rows once its SQL write holds the row locks and writes
again while they changed: a concurrent write between the read and the SQL write is never overwritten by an
older image (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualwrite.canonical import canonical_value
from dualwrite.errors import StoreError
from dualwrite.keyvalue.encoding import native_value
from dualwrite.mapping import ColumnPlan, SourceKind, TableMapping
from dualwrite.stores._kind import Key, Role, Row, normal_key
from dualwrite.stores.redis._table import RedisTable

__all__ = ["RedisSourceTable", "identity_mapping"]


def identity_mapping(mapping: TableMapping) -> TableMapping:
    """The Redis table of ``mapping``'s source side mapped onto itself (every column, same names)."""
    info = mapping.source_info
    cols = tuple(ColumnPlan(target=c, kind=SourceKind.COLUMN, source=c, inputs=(c,)) for c in info.columns)
    version = None if mapping.version is None else (mapping.version[0], mapping.version[0])
    return TableMapping(source_table=mapping.source_table, target_table=mapping.source_table,
                        source_key=mapping.source_key, target_key=mapping.source_key, columns=cols,
                        source_info=info, target_info=info, version=version, batch_size=mapping.batch_size,
                        tenant_column=mapping.tenant_column, key_kinds=mapping.key_kinds)


class RedisSourceTable:
    """A :class:`~dualwrite.stores.MappedTable` reading a mapping's source table from Redis."""

    role = Role.SOURCE

    def __init__(self, inner: RedisTable, mapping: TableMapping) -> None:
        self.inner = inner
        self.mapping = mapping
        self.names = inner.names  # the Redis table's columns, in the inner row order
        info = mapping.source_info
        self.kinds = {c: info.columns[c].kind for c in self.names}
        self.target_kinds = [(mapping.target_info.columns[p.target].kind, mapping.target_info.columns[p.target].scale)
                             for p in mapping.columns]
        bad = [p.target for p in mapping.columns if p.kind is SourceKind.EXPR]
        if bad:
            raise StoreError(f"table {mapping.source_table}: {', '.join(bad)} come from an SQL expression, which "
                             "Redis cannot run: use a transform in the reverse rule")

    def _map(self, row: Row) -> Row:
        got = {c: native_value(v, self.kinds[c]) for c, v in zip(self.names, row, strict=True)}
        out: list[Any] = []
        for plan in self.mapping.columns:
            if plan.kind is SourceKind.COLUMN:
                out.append(got.get(plan.source or ""))
            elif plan.kind is SourceKind.DEFAULT:
                out.append(plan.value)
            else:
                assert plan.transform is not None
                out.append(plan.transform(got.get(plan.source)) if plan.source else plan.transform(dict(got)))
        return tuple(out)

    def _canonical(self, row: Row) -> Row:
        return tuple(canonical_value(v, k, s) for v, (k, s) in zip(row, self.target_kinds, strict=True))

    # -- reading -------------------------------------------------------------------------------------------

    def read_keys(self, conn: Any, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
        return [self._map(r) for r in self.inner.read_keys(conn, keys)]

    def read_range(self, conn: Any, lo: Key | None, hi: Key | None, *, lock: bool = False) -> list[Row]:
        return [self._map(r) for r in self.inner.read_range(conn, lo, hi)]

    def row_key(self, row: Row) -> Key:
        return normal_key(tuple(row[p] for p in self.mapping.key_positions))

    def stored_rows(self, conn: Any, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        return self.inner.stored_rows(conn, keys)

    def canonical_keys(self, conn: Any, keys: Sequence[Key]) -> tuple[list[Row], list[Row]]:
        rows = self.read_keys(conn, keys)
        return rows, [self._canonical(r) for r in rows]

    def canonical_range(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        rows = self.read_range(conn, lo, hi)
        return rows, [self._canonical(r) for r in rows]

    # -- walking keys (the Redis table's, by SCAN) -------------------------------------------------------

    def range_keys(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        return self.inner.range_keys(conn, lo, hi)

    def nth_key(self, conn: Any, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        return self.inner.nth_key(conn, lo, hi, offset)

    def every_nth_key(self, conn: Any, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
        return self.inner.every_nth_key(conn, lo, hi, step)

    def key_digest(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
        return None

    # -- writing: never (the source side) -----------------------------------------------------------------

    def _refuse(self) -> Any:
        raise StoreError(f"table {self.mapping.source_table}: the source side of a mapping is never written")

    def upsert(self, conn: Any, rows: list[Row], *, insert_only: bool, only_if_newer: bool) -> None:
        self._refuse()

    def insert_chunk(self, conn: Any, rows: list[Row], *, insert_only: bool) -> tuple[int, bool]:
        return self._refuse()  # type: ignore[no-any-return]

    def delete(self, conn: Any, keys: Sequence[Key]) -> int:
        return self._refuse()  # type: ignore[no-any-return]
