"""Canonical rows of one side of a mapping on a SQL store, for row-by-row verification.

The target side selects its columns with the engine rendering canonical text where it can
(:mod:`._canon_read`); the source side selects the mapped expressions, the source columns cast or
rendered as the *target* column will compare, and fills Python transforms before canonicalising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import rows as rowio
from dualwrite import sqlgen
from dualwrite.canonical import Normalizer, Row, RowCanon, canonical_value
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.sqlgen import Key, Side, source_side, target_side
from dualwrite.store import ColumnInfo, Dialect, Store
from dualwrite.stores.sql._canon_read import column_read, fetch, table_reader


def fetch_and_end(conn: Any, dialect: Dialect, sql: str, params: Sequence[Any]) -> list[Row]:
    """All rows of one query, read the way :mod:`dualwrite.canonical` expects, then end the transaction
    (no snapshot is held between chunks)."""
    rows = fetch(conn, dialect, sql, params)
    conn.rollback()
    return rows


@dataclass(frozen=True)
class CanonReader:
    """How one side's rows are selected and canonicalised: SQL select list, row finisher, canonicaliser."""

    side: Side
    select: str
    canon: RowCanon
    finish: Callable[[list[Row]], list[Row]] | None  # fills Python transforms (source side only)

    def _sql(self, where: str) -> str:
        return f"SELECT {self.select} FROM {self.side.qtable} WHERE {where} ORDER BY {self.side.order_by()}"

    def range_sql(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        where, params = self.side.range_predicate(lo, hi)
        return self._sql(where), params

    def keys_sql(self, keys: Sequence[Key]) -> tuple[str, list[Any]]:
        where, params = self.side.keys_predicate(keys)
        return self._sql(where), params

    def read(self, conn: Any, sql: str, params: Sequence[Any]) -> tuple[list[Row], list[Row]]:
        """(raw rows, canonical rows): raw rows keep driver values of the key for repair."""
        raw = fetch_and_end(conn, self.side.store.dialect, sql, params)
        if self.finish is not None:
            raw = self.finish(raw)
        return raw, self.canon.rows(raw)


def target_reader(mapping: TableMapping, store: Store) -> CanonReader:
    exprs, canon = table_reader(mapping.target_info, store.dialect, store.quote,
                                          mapping.target_columns, mapping.target_key)
    return CanonReader(target_side(mapping, store), ", ".join(exprs), canon, None)


def source_reader(mapping: TableMapping, store: Store) -> CanonReader:
    side = source_side(mapping, store)
    keyset = set(mapping.target_key)
    exprs: list[str] = []
    norms: list[Normalizer | None] = []
    constants: dict[int, Any] = {}
    for i, plan in enumerate(mapping.columns):
        col = mapping.target_info.columns[plan.target]
        src_col: ColumnInfo | None = None
        expr = "NULL"
        if plan.kind is SourceKind.COLUMN:
            assert plan.source is not None
            src_col = mapping.source_info.columns[plan.source]
            expr = store.quote(plan.source)
        elif plan.kind is SourceKind.EXPR:
            expr = sqlgen.user_expr(plan.expr or "", store)
        how = column_read(
            col.kind, store.dialect, value_kind=src_col.kind if src_col else None, scale=col.scale,
            value_scale=src_col.scale if src_col else None, value_type=src_col.sql_type if src_col else None,
            rewrite=plan.target not in keyset)
        if plan.kind is SourceKind.DEFAULT and not mapping.needs_python:
            constants[i] = canonical_value(plan.value, col.kind, col.scale)
        exprs.append(how.sql(expr) if how.sql and plan.kind is SourceKind.COLUMN else expr)
        norms.append(how.normalize)
    finish: Callable[[list[Row]], list[Row]] | None = None
    if mapping.needs_python:
        # whole-row transforms see every source column by name, appended after the target columns
        exprs += [store.quote(c) for c in mapping.source_info.columns]
        finish = _finisher(mapping)
    return CanonReader(side, ", ".join(exprs), RowCanon(norms, constants), finish)


def _finisher(mapping: TableMapping) -> Callable[[list[Row]], list[Row]]:
    def finish(raw: list[Row]) -> list[Row]:
        return rowio.finish_rows(mapping, raw)

    return finish
