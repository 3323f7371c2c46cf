"""Verification and key checks pushed down into SQL engines: per-row hashes XOR-ed over a range.

Both stores must be the same engine (PostgreSQL or MariaDB/MySQL) and the mapping free of Python
transforms: the source columns are cast to the target's types first, so equal data hashes equal.
PostgreSQL hashes the typed row with ``hash_record_extended`` (no text rendering); MariaDB hashes a
canonical text rendering with MD5. Nothing but two numbers per range crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import rows as rowio
from dualwrite import sqlgen
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.sqlgen import Key, Side, source_side, target_side
from dualwrite.store import ColumnInfo, Dialect, Kind, Store
from dualwrite.stores.sql._readers import fetch_and_end

_MASK64 = (1 << 64) - 1

#: kinds PostgreSQL can hash in their typed form (json has no hash opclass; unknown types go via text)
#: kinds PostgreSQL can hash in their typed form (json has no hash opclass; unknown types go via text)
_PG_HASHABLE = {Kind.INT, Kind.BOOL, Kind.DECIMAL, Kind.FLOAT, Kind.TEXT, Kind.BYTES, Kind.DATE, Kind.TIME,
                Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.UUID}


def _pg_hash_part(expr: str, col: ColumnInfo) -> str:
    if col.kind in _PG_HASHABLE or (col.kind is Kind.JSON and col.sql_type == "jsonb"):
        return expr
    return f"({expr})::text"


def _pg_row_hash(exprs: Sequence[str], cols: Sequence[ColumnInfo]) -> str:
    # hash_record_extended hashes every field with its type's own hash (no text rendering); the outer
    # hashint8extended mixes the result so XOR-ing rows keeps no linear structure across fields
    parts = ", ".join(_pg_hash_part(e, c) for e, c in zip(exprs, cols, strict=True))
    return f"hashint8extended(hash_record_extended(ROW({parts}), 0), 0)"


def _my_canon(expr: str, col: ColumnInfo) -> str:
    """A MariaDB rendering of ``expr`` as text that equal values of the target column share."""
    kind = col.kind
    if kind is Kind.INT:
        return f"CAST({expr} AS {'UNSIGNED' if 'UNSIGNED' in col.sql_type.upper() else 'SIGNED'})"
    if kind is Kind.BOOL:
        return f"(({expr}) <> 0)"
    if kind is Kind.DECIMAL and col.precision:
        return f"CAST({expr} AS DECIMAL({int(col.precision)}, {int(col.scale or 0)}))"
    if kind is Kind.FLOAT:
        return f"CAST({expr} AS DOUBLE)"
    if kind is Kind.BYTES:
        return f"CAST({expr} AS BINARY)"
    if kind is Kind.DATE:
        return f"CAST({expr} AS DATE)"
    if kind is Kind.TIME:
        return f"CAST({expr} AS TIME(6))"
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return f"CAST({expr} AS DATETIME(6))"
    if kind is Kind.JSON:
        return f"CAST(CONVERT(JSON_NORMALIZE({expr}) USING utf8mb4) AS BINARY)"
    if kind is Kind.UUID:
        return f"CAST(CONVERT(LOWER(CAST({expr} AS CHAR)) USING utf8mb4) AS BINARY)"
    return f"CAST(CONVERT({expr} USING utf8mb4) AS BINARY)"


def _my_row_hash(exprs: Sequence[str], cols: Sequence[ColumnInfo]) -> str:
    # MD5 (not CRC32): a linear hash XOR-ed over rows cannot see two rows swapping a value
    values = ", ".join(_my_canon(e, c) for e, c in zip(exprs, cols, strict=True))
    nulls = ", ".join(f"ISNULL({e})" for e in exprs)
    return f"CAST(CONV(LEFT(MD5(CONCAT_WS(0x1f, {values}, CONCAT({nulls}))), 16), 16, 10) AS UNSIGNED)"


@dataclass(frozen=True)
class SqlChecksum:
    """One side's chunk checksum query: ``SELECT count, xor-of-row-hashes WHERE range``."""

    side: Side
    hash_expr: str

    def sql(self, where: str) -> str:
        if self.side.store.dialect is Dialect.POSTGRESQL:
            return f"SELECT count(*), coalesce(bit_xor({self.hash_expr}), 0) FROM {self.side.qtable} WHERE {where}"
        return f"SELECT COUNT(*), COALESCE(BIT_XOR({self.hash_expr}), 0) FROM {self.side.qtable} WHERE {where}"

    def checksum(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[int, int]:
        kinds, dialect = self.side.key_kinds, self.side.store.dialect
        where, params = self.side.range_predicate(None if lo is None else rowio.adapt_key(lo, kinds, dialect),
                                                  None if hi is None else rowio.adapt_key(hi, kinds, dialect))
        ((count, digest),) = fetch_and_end(conn, self.side.store.dialect, self.sql(where), params)
        return int(count), int(digest)


def pair_checksums(mapping: TableMapping, source: Store, target: Store) -> tuple[SqlChecksum, SqlChecksum]:
    cols = [mapping.target_info.columns[c] for c in mapping.target_columns]
    tgt_exprs = [target.quote(c) for c in mapping.target_columns]
    if source.dialect is Dialect.POSTGRESQL:
        src_exprs = _pg_source_exprs(mapping, source)
        row_hash = _pg_row_hash
    else:
        src_exprs = _my_source_exprs(mapping, source)
        row_hash = _my_row_hash
    return (SqlChecksum(source_side(mapping, source), row_hash(src_exprs, cols)),
            SqlChecksum(target_side(mapping, target), row_hash(tgt_exprs, cols)))


def _pg_source_exprs(mapping: TableMapping, store: Store) -> list[str]:
    """Source expressions cast to the target's types (as the copy casts them); same-typed columns are
    left alone, which saves a quarter of the hashing time."""
    out = []
    for plan in mapping.columns:
        target_type = mapping.target_info.columns[plan.target].sql_type
        if plan.kind is SourceKind.COLUMN:
            assert plan.source is not None
            expr = store.quote(plan.source)
            if mapping.source_info.columns[plan.source].sql_type == target_type:
                out.append(expr)
                continue
        elif plan.kind is SourceKind.EXPR:
            expr = sqlgen.user_expr(plan.expr or "", store)
        else:
            expr = sqlgen.pg_literal(plan.value)
        out.append(f"CAST({expr} AS {target_type})")
    return out


def _my_source_exprs(mapping: TableMapping, store: Store) -> list[str]:
    out = []
    for plan in mapping.columns:
        if plan.kind is SourceKind.COLUMN:
            assert plan.source is not None
            out.append(store.quote(plan.source))
        elif plan.kind is SourceKind.EXPR:
            out.append(sqlgen.user_expr(plan.expr or "", store))
        else:
            out.append(_my_literal(plan.value))
    return out


def _my_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    # a hex literal cannot be broken by quotes or backslashes in the value
    return f"CONVERT(X'{str(value).encode().hex()}' USING utf8mb4)"


def can_push_down(mapping: TableMapping, source: Store, target: Store) -> bool:
    """Same engine, and an engine that can hash rows, and no Python in the mapping."""
    return (source.dialect is target.dialect and source.dialect in (Dialect.POSTGRESQL, Dialect.MYSQL)
            and not mapping.needs_python)


# -- key digests (the backfill's key check) --------------------------------------------------------------


def _key_digest_sql(side: Side, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]] | None:
    where, params = side.range_predicate(lo, hi)
    q = side.store.quote
    parts = ", ".join(q(k) for k in side.key)
    if side.store.dialect is Dialect.POSTGRESQL:
        if len(side.key) > 1:
            expr = f"hashtextextended(ROW({parts})::text, 0)"
        elif side.key_kinds[0] is Kind.INT:
            expr = f"hashint8extended({q(side.key[0])}::bigint, 0)"  # no text rendering: twice as fast
        else:
            expr = f"hashtextextended({q(side.key[0])}::text, 0)"
        return f"SELECT count(*), coalesce(bit_xor({expr}), 0) FROM {side.qtable} WHERE {where}", params
    if side.store.dialect is Dialect.MYSQL:
        expr = f"CAST(CONV(LEFT(MD5(CONCAT_WS(0x1f, {parts})), 16), 16, 10) AS UNSIGNED)"
        return f"SELECT COUNT(*), COALESCE(BIT_XOR({expr}), 0) FROM {side.qtable} WHERE {where}", params
    return None


def key_digest(conn: Any, side: Side, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
    """(scheme, count, XOR of 64-bit key hashes) of a range (bounds already in the side's driver form),
    or None on an engine without a hash function (SQLite). The scheme is the engine's name: digests of
    two engines never compare."""
    stmt = _key_digest_sql(side, lo, hi)
    if stmt is None:
        return None
    (row,) = rowio.fetch(conn, *stmt)
    return side.store.dialect.value, int(row[0]), int(row[1]) & _MASK64
