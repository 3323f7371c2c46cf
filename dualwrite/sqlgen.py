"""SQL text for one table mapping on one store: select lists, keyset predicates, guarded writes.

Statements are plain strings with DBAPI placeholders, because the hot paths run them through the raw
DBAPI connection. String key columns are ordered and compared bytewise on every engine (``COLLATE "C"``,
``BINARY``), so a key range selects the same rows on an old MariaDB and a new PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.store import Dialect, Kind, Store

Key = tuple[Any, ...]


def user_expr(expr: str, store: Store) -> str:
    """A spec's SQL expression, parenthesised, ready to paste into a statement run with parameters.

    Statements built here always go to the driver *with* a parameter tuple (even an empty one), and with
    the ``%s`` paramstyle (psycopg, MySQLdb) the driver then reads every ``%`` as the start of a
    placeholder: ``price % 100`` or ``LIKE 'A%'`` would fail, or worse, shift the parameters. Doubling
    it keeps the operator's SQL meaning what it says. SQLite's ``?`` style leaves ``%`` alone.
    """
    return f"({expr.replace('%', '%%')})" if store.paramstyle == "%s" else f"({expr})"


@dataclass(frozen=True)
class Side:
    """One side of a mapping: the table, its key columns and the columns to read, on one store."""

    store: Store
    table: str
    key: tuple[str, ...]
    key_kinds: tuple[Kind, ...]

    @property
    def qtable(self) -> str:
        return self.store.quote(self.table)

    def key_expr(self, i: int) -> str:
        col = self.store.quote(self.key[i])
        if self.key_kinds[i] is Kind.UUID and self.store.dialect is Dialect.MYSQL:
            # MariaDB's UUID type orders by its storage form (time fields swapped), not by the text that
            # PostgreSQL orders by: compare the text. (Costs the index for ranges; CHAR(36) keys keep it.)
            if self.store.describe(self.table).columns[self.key[i]].sql_type.upper() == "UUID":
                return f"CAST({col} AS CHAR CHARACTER SET ascii) COLLATE ascii_bin"
            return col
        if self.key_kinds[i] is not Kind.TEXT:
            return col
        if self.store.dialect is Dialect.POSTGRESQL and not self.store.binary_collation(self.table, self.key[i]):
            return f'{col} COLLATE "C"'
        if self.store.dialect is Dialect.MYSQL and not self.store.binary_collation(self.table, self.key[i]):
            return f"BINARY {col}"
        return col

    def key_list(self) -> str:
        return ", ".join(self.store.quote(k) for k in self.key)

    def order_by(self, desc: bool = False) -> str:
        d = " DESC" if desc else ""
        return ", ".join(self.key_expr(i) + d for i in range(len(self.key)))

    def range_predicate(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        """``lo < key <= hi`` (either bound may be open)."""
        parts: list[str] = []
        params: list[Any] = []
        if lo is not None:
            sql, p = self._compare(lo, ">")
            parts.append(sql)
            params += p
        if hi is not None:
            sql, p = self._compare(hi, "<=")
            parts.append(sql)
            params += p
        return (" AND ".join(parts) if parts else "1=1"), params

    def _compare(self, bound: Key, op: str) -> tuple[str, list[Any]]:
        ph = self.store.paramstyle
        n = len(self.key)
        if n == 1:
            return f"{self.key_expr(0)} {op} {ph}", [bound[0]]
        if self.store.dialect is not Dialect.MYSQL:
            cols = ", ".join(self.key_expr(i) for i in range(n))
            return f"({cols}) {op} ({', '.join([ph] * n)})", list(bound)
        # MariaDB does not use an index for row-value ranges: expand to the OR form.
        strict = op[0]
        ors: list[str] = []
        params: list[Any] = []
        for i in range(n):
            eqs = [f"{self.key_expr(j)} = {ph}" for j in range(i)]
            last_op = strict if i < n - 1 else op
            ors.append("(" + " AND ".join([*eqs, f"{self.key_expr(i)} {last_op} {ph}"]) + ")")
            params += [*bound[:i], bound[i]]
        return "(" + " OR ".join(ors) + ")", params

    def keys_predicate(self, keys: Sequence[Key]) -> tuple[str, list[Any]]:
        """``key IN (...)`` for a batch of keys."""
        ph = self.store.paramstyle
        if len(self.key) == 1:
            return f"{self.store.quote(self.key[0])} IN ({', '.join([ph] * len(keys))})", [k[0] for k in keys]
        one = "(" + ", ".join([ph] * len(self.key)) + ")"
        params = [v for k in keys for v in k]
        return f"({self.key_list()}) IN ({', '.join([one] * len(keys))})", params


def source_side(mapping: TableMapping, store: Store) -> Side:
    return Side(store, mapping.source_table, mapping.source_key, mapping.key_kinds)


def target_side(mapping: TableMapping, store: Store) -> Side:
    """The target's key columns with *their* kinds: a CHAR(36) key on one store may be a uuid on the other,
    and a bound or key must be sent as what the target's column compares with."""
    info = mapping.target_info
    kinds = mapping.key_kinds
    if info is not None and all(k in info.columns for k in mapping.target_key):
        kinds = tuple(info.columns[k].kind for k in mapping.target_key)
    return Side(store, mapping.target_table, mapping.target_key, kinds)


def source_select_list(mapping: TableMapping, store: Store, *, cast_to_target: bool = False) -> list[str]:
    """Expressions on the source producing the target columns in order.

    DEFAULT and TRANSFORM columns produce NULL placeholders here (filled in Python by the caller), except
    with ``cast_to_target`` (the PostgreSQL pass-through path), where defaults become typed literals.
    """
    out: list[str] = []
    for plan in mapping.columns:
        target_type = mapping.target_info.columns[plan.target].sql_type
        if plan.kind is SourceKind.COLUMN:
            assert plan.source is not None
            e = store.quote(plan.source)
            if cast_to_target and mapping.source_info.columns[plan.source].sql_type == target_type:
                out.append(e)  # same type on both sides: nothing to convert, and the planner is spared a cast
                continue
        elif plan.kind is SourceKind.EXPR:
            assert plan.expr is not None
            e = user_expr(plan.expr, store)
        elif plan.kind is SourceKind.DEFAULT and cast_to_target:
            e = pg_literal(plan.value)
        else:
            e = "NULL"
        if cast_to_target:
            e = f"CAST({e} AS {target_type})"
        out.append(e)
    if mapping.needs_python:
        # whole-row transforms see every source column by name, appended after the target columns
        out += [store.quote(c) for c in mapping.source_info.columns]
    return out


def pg_literal(value: Any) -> str:
    """A PostgreSQL literal for a spec default (the caller casts it to the column type)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return "'\\x" + value.hex() + "'::bytea"
    return "'" + str(value).replace("'", "''") + "'"


# -- MariaDB -> PostgreSQL text COPY -------------------------------------------------------------------------
# MariaDB renders each value as PostgreSQL COPY text: the text protocol already spells numbers, dates and
# times the way PostgreSQL reads them; text gets COPY's four escapes, bytes become ``\\x<hex>``, NULL
# becomes ``\N``. Literals are hex with a charset introducer so no sql_mode changes their meaning.

_MY_NULL = "_utf8mb4 X'5C4E'"  # \N
_MY_ESCAPES = (("5C", "5C5C"), ("09", "5C74"), ("0A", "5C6E"), ("0D", "5C72"))  # \ TAB LF CR
_MY_TEXTISH = frozenset({Kind.TEXT, Kind.JSON, Kind.UUID, Kind.OTHER})


def _my_copy_escape(expr: str) -> str:
    out = f"CONVERT({expr} USING utf8mb4)"
    for old, new in _MY_ESCAPES:
        out = f"REPLACE({out}, _utf8mb4 X'{old}', _utf8mb4 X'{new}')"
    return out


def mysql_copy_text_select(mapping: TableMapping, src: Side, lo: Key | None, hi: Key | None,
                           defaults: dict[int, str]) -> tuple[str, list[Any], bool]:
    """SELECT on MariaDB yielding each target column as PostgreSQL COPY text, plus ``null_safe``.

    ``defaults`` are the DEFAULT columns pre-rendered as COPY text (by position). ``null_safe`` is True
    when no column can come back NULL, so rows join into lines without a per-value look. Floats are left
    as the server's own text (wrapping them would change how they are printed), so they may be NULL.
    """
    store = src.store
    exprs: list[str] = []
    params: list[Any] = []
    null_safe = True
    for i, plan in enumerate(mapping.columns):
        tkind = mapping.target_info.columns[plan.target].kind
        if plan.kind is SourceKind.DEFAULT:
            if i in defaults:
                exprs.append("%s")
                params.append(defaults[i])
            else:
                exprs.append(_MY_NULL)
            continue
        if plan.kind is SourceKind.COLUMN:
            assert plan.source is not None
            col = mapping.source_info.columns[plan.source]
            e, skind, nullable = store.quote(plan.source), col.kind, col.nullable
        else:  # EXPR
            assert plan.expr is not None
            e, skind, nullable = user_expr(plan.expr, store), tkind, True
        if tkind is Kind.BYTES:
            e = f"CONCAT(_utf8mb4 X'5C5C78', HEX({e}))"
        elif skind in _MY_TEXTISH or tkind in _MY_TEXTISH:
            e = _my_copy_escape(e)
        elif skind is Kind.FLOAT:
            null_safe = null_safe and not nullable
            exprs.append(e)
            continue
        exprs.append(f"IFNULL({e}, {_MY_NULL})" if nullable else e)
    where, wparams = src.range_predicate(lo, hi)
    sql = f"SELECT {', '.join(exprs)} FROM {src.qtable} WHERE {where} ORDER BY {src.order_by()}"
    return sql, params + wparams, null_safe


def select_range_sql(mapping: TableMapping, src: Side, lo: Key | None, hi: Key | None,
                     *, cast_to_target: bool = False, lock: bool = False) -> tuple[str, list[Any]]:
    cols = ", ".join(source_select_list(mapping, src.store, cast_to_target=cast_to_target))
    where, params = src.range_predicate(lo, hi)
    sql = f"SELECT {cols} FROM {src.qtable} WHERE {where} ORDER BY {src.order_by()}"
    if lock and src.store.dialect is not Dialect.SQLITE:
        sql += " FOR UPDATE"
    return sql, params


def select_keys_sql(mapping: TableMapping, src: Side, keys: Sequence[Key], *, lock: bool = False
                    ) -> tuple[str, list[Any]]:
    cols = ", ".join(source_select_list(mapping, src.store))
    where, params = src.keys_predicate(keys)
    sql = f"SELECT {cols} FROM {src.qtable} WHERE {where} ORDER BY {src.order_by()}"
    if lock and src.store.dialect is not Dialect.SQLITE:
        sql += " FOR UPDATE"
    return sql, params


def nth_key_sql(side: Side, lo: Key | None, hi: Key | None, offset: int) -> tuple[str, list[Any]]:
    """The key ``offset`` rows after ``lo`` (within ``hi``): the upper bound of the next chunk."""
    where, params = side.range_predicate(lo, hi)
    return (f"SELECT {side.key_list()} FROM {side.qtable} WHERE {where} ORDER BY {side.order_by()} "
            f"LIMIT 1 OFFSET {int(offset)}", params)


def upsert_sql(mapping: TableMapping, dst: Side, *, only_if_newer: bool, insert_only: bool) -> str:
    """One-row upsert statement for executemany.

    ``insert_only``: never touch an existing row (backfill without a version column: whatever a live
    mirror wrote is at least as new as the backfill's image). ``only_if_newer``: update only when the
    incoming version is greater (the version guard).
    """
    store = dst.store
    q = store.quote
    cols = mapping.target_columns
    keyset = set(mapping.target_key)
    non_key = [c for c in cols if c not in keyset]
    ph = ", ".join([store.paramstyle] * len(cols))
    collist = ", ".join(q(c) for c in cols)
    table = dst.qtable
    vcol = mapping.version[1] if mapping.version and only_if_newer else None
    if store.dialect is Dialect.MYSQL:
        head = f"INSERT INTO {table} ({collist}) VALUES ({ph})"
        if insert_only or not non_key:
            k = q(mapping.target_key[0])
            return f"{head} ON DUPLICATE KEY UPDATE {k} = {k}"
        if vcol:
            # MySQL evaluates assignments left to right: the version column goes last.
            guard = f"VALUES({q(vcol)}) > {q(vcol)}"
            sets = [f"{q(c)} = IF({guard}, VALUES({q(c)}), {q(c)})" for c in non_key if c != vcol]
            sets.append(f"{q(vcol)} = IF({guard}, VALUES({q(vcol)}), {q(vcol)})")
        else:
            sets = [f"{q(c)} = VALUES({q(c)})" for c in non_key]
        return f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    conflict = ", ".join(q(k) for k in mapping.target_key)
    head = f"INSERT INTO {table} ({collist}) VALUES ({ph}) ON CONFLICT ({conflict})"
    if insert_only or not non_key:
        return f"{head} DO NOTHING"
    updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in non_key)
    guard = f" WHERE {table}.{q(vcol)} < excluded.{q(vcol)}" if vcol else ""
    return f"{head} DO UPDATE SET {updates}{guard}"


def pg_merge_from_staging_sql(mapping: TableMapping, dst: Side, staging: str, *, only_if_newer: bool,
                              insert_only: bool) -> str:
    """PostgreSQL: move a staged chunk into the target with one guarded INSERT ... ON CONFLICT."""
    q = dst.store.quote
    cols = mapping.target_columns
    collist = ", ".join(q(c) for c in cols)
    keyset = set(mapping.target_key)
    non_key = [c for c in cols if c not in keyset]
    conflict = ", ".join(q(k) for k in mapping.target_key)
    head = f"INSERT INTO {dst.qtable} ({collist}) SELECT {collist} FROM {staging} ON CONFLICT ({conflict})"
    if insert_only or not non_key:
        return f"{head} DO NOTHING"
    sets = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in non_key)
    vcol = mapping.version[1] if mapping.version and only_if_newer else None
    guard = f" WHERE {dst.qtable}.{q(vcol)} < excluded.{q(vcol)}" if vcol else ""
    return f"{head} DO UPDATE SET {sets}{guard}"


def delete_keys_sql(dst: Side, keys: Sequence[Key]) -> tuple[str, list[Any]]:
    where, params = dst.keys_predicate(keys)
    return f"DELETE FROM {dst.qtable} WHERE {where}", params
