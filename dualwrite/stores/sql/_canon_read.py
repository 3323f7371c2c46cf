"""Reading columns for comparison on a SQL store: SQL rewrites that let the engine render canonical text.

The canonical forms themselves are the store-neutral :mod:`dualwrite.canonical`; this module picks, per
column and engine, a select expression that makes the driver hand back a cheap canonical value straight
away (PostgreSQL ``x::text`` / ``round(x, s)::text`` and ``to_char`` for decimals and timestamps; MariaDB
sends DECIMAL and DATETIME(6) as exactly that text, read untouched by :func:`fetch`) and the Python
normaliser that finishes the rest. Read rows selected with :func:`table_reader` / :func:`column_read`
through :func:`fetch`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.canonical import (
    GENERIC,
    Normalizer,
    Row,
    RowCanon,
    canon_bool,
    canon_float,
    canon_json,
    canon_json_text,
    canon_timestamp_text,
    decimal_text,
)
from dualwrite.store import Dialect, Kind, TableInfo

# choosing a normaliser (and an optional SQL rewrite) per column, once


@dataclass(frozen=True)
class ColumnRead:
    """How one column is read for comparison on one store.

    ``sql`` wraps the column's select expression (``None``: select it as is) so the driver returns a cheap
    canonical value straight away; ``normalize`` finishes in Python (``None``: nothing to do).
    """

    sql: Callable[[str], str] | None
    normalize: Normalizer | None


_TS_KINDS = (Kind.TIMESTAMP, Kind.TIMESTAMPTZ)
_PG_TS_FORMAT = "'YYYY-MM-DD HH24:MI:SS.US'"
#: MariaDB's largest DECIMAL scale; beyond it the rendering is left to Python
_MY_MAX_SCALE = 30


def _pg_text(expr: str) -> str:
    return f"(({expr})::text)"


def _pg_ts_text(utc: bool) -> Callable[[str], str]:
    def render(expr: str) -> str:
        inner = f"(({expr}) AT TIME ZONE 'UTC')" if utc else f"({expr})"
        # to_char renders +-infinity as '': keep them distinguishable from each other and from ''
        return f"(CASE WHEN isfinite({expr}) THEN to_char({inner}, {_PG_TS_FORMAT}) ELSE ({expr})::text END)"

    return render


def _my_datetime6(expr: str) -> str:
    return f"CAST({expr} AS DATETIME(6))"


def _my_fsp(sql_type: str | None) -> int | None:
    """Fractional-second digits of a MariaDB DATETIME/TIMESTAMP type (``DATETIME(6)`` -> 6)."""
    if not sql_type:
        return None
    match = re.search(r"\((\d+)\)", sql_type)
    return int(match.group(1)) if match else 0


def _decimal_sql(dialect: Dialect, scale: int, same_scale: bool) -> Callable[[str], str] | None:
    if dialect is Dialect.POSTGRESQL:
        if same_scale:
            return _pg_text
        return lambda e: f"(round(({e})::numeric, {int(scale)})::text)"
    if dialect is Dialect.MYSQL and scale <= _MY_MAX_SCALE:
        return lambda e: f"CAST(CAST(({e}) AS DECIMAL(65, {int(scale)})) AS CHAR)"
    return None


#: (dialect, kind) pairs whose driver value is canonical when the column really has that kind
_NATIVE: dict[Dialect, set[Kind]] = {
    Dialect.POSTGRESQL: {Kind.INT, Kind.BOOL, Kind.DECIMAL, Kind.TEXT, Kind.BYTES, Kind.DATE, Kind.TIME},
    # MariaDB as read by fetch(): DATE as a date, DECIMAL as text (handled above with its scale)
    Dialect.MYSQL: {Kind.INT, Kind.FLOAT, Kind.TEXT, Kind.BYTES, Kind.DATE},
    Dialect.SQLITE: {Kind.INT, Kind.TEXT, Kind.BYTES},
}


def _timestamp_read(dialect: Dialect, value_kind: Kind | None, value_type: str | None,
                    rewrite: bool) -> ColumnRead:
    if rewrite and value_kind in _TS_KINDS:
        if dialect is Dialect.POSTGRESQL:
            return ColumnRead(_pg_ts_text(value_kind is Kind.TIMESTAMPTZ), None)
        if dialect is Dialect.MYSQL:
            # fetch() hands DATETIME/TIMESTAMP over as the text received: with 6 digits it is canonical
            return ColumnRead(None if _my_fsp(value_type) == 6 else _my_datetime6, None)
    return ColumnRead(None, canon_timestamp_text)


def _decimal_read(dialect: Dialect, value_kind: Kind | None, scale: int, value_scale: int | None,
                  rewrite: bool) -> ColumnRead:
    same_scale = value_kind is Kind.DECIMAL and value_scale == scale
    if dialect is Dialect.MYSQL and same_scale:
        return ColumnRead(None, None)  # fetch() hands DECIMAL over as the text received
    if rewrite and value_kind in (Kind.DECIMAL, Kind.INT):
        sql = _decimal_sql(dialect, scale, same_scale)
        if sql is not None:
            return ColumnRead(sql, None)
    return ColumnRead(None, decimal_text(scale))


def column_read(kind: Kind, dialect: Dialect, *, value_kind: Kind | None, scale: int | None = None,
                value_scale: int | None = None, value_type: str | None = None, rewrite: bool = True
                ) -> ColumnRead:
    """Pick how to read a column for comparison.

    ``kind``/``scale``: the target column's kind and scale (what both sides are compared as).
    ``value_kind``/``value_scale``/``value_type`` (the engine's type name): what this side's select
    expression really holds, i.e. the source column's when a renamed or widened column is read on the
    source; ``None`` when unknown (an expression, a default, a Python transform). ``rewrite=False``
    forbids SQL rewrites (key columns keep their raw values so they can be looked up again).
    """
    if kind in _TS_KINDS:
        return _timestamp_read(dialect, value_kind, value_type, rewrite)
    if kind is Kind.DECIMAL and scale is not None:
        return _decimal_read(dialect, value_kind, scale, value_scale, rewrite)
    generic = GENERIC[kind]
    if value_kind is not kind:
        return ColumnRead(None, generic)
    if dialect is Dialect.POSTGRESQL and rewrite:
        if kind is Kind.UUID:
            return ColumnRead(_pg_text, None)
        if kind is Kind.JSON:
            return ColumnRead(_pg_text, canon_json_text)
    if dialect is Dialect.POSTGRESQL and kind is Kind.FLOAT:
        return ColumnRead(None, canon_float)
    if kind in _NATIVE[dialect]:
        return ColumnRead(None, None)
    if kind is Kind.JSON:
        # MariaDB and SQLite hold JSON as text; PostgreSQL without the rewrite hands back parsed objects
        return ColumnRead(None, canon_json if dialect is Dialect.POSTGRESQL else canon_json_text)
    if kind is Kind.BOOL:
        return ColumnRead(None, canon_bool if dialect is Dialect.SQLITE else bool)
    return ColumnRead(None, generic)



def table_reader(info: TableInfo, dialect: Dialect, quote: Callable[[str], str], columns: Sequence[str],
                 key: Sequence[str] = ()) -> tuple[list[str], RowCanon]:
    """Select expressions and the row canonicaliser for reading ``columns`` of a table on one store.

    Key columns are selected raw (no SQL rewrite), so the values read can be looked up again. Run the
    query with :func:`fetch`, then ``canon.rows(rows)``.
    """
    keyset = set(key)
    exprs: list[str] = []
    norms: list[Normalizer | None] = []
    for name in columns:
        col = info.columns[name]
        how = column_read(col.kind, dialect, value_kind=col.kind, scale=col.scale, value_scale=col.scale,
                          value_type=col.sql_type, rewrite=name not in keyset)
        q = quote(name)
        exprs.append(how.sql(q) if how.sql else q)
        norms.append(how.normalize)
    return exprs, RowCanon(norms)


# ---------------------------------------------------------------------------------------------------------
# fetching rows in the form the readers above expect


def _my_date(s: Any) -> Any:
    if isinstance(s, bytes):
        s = s.decode("ascii")
    try:
        return dt.date.fromisoformat(s)
    except (ValueError, TypeError):
        return None  # a zero date ('0000-00-00') or another that is no date: what mysqlclient reads as None


@contextlib.contextmanager
def _mysql_converters(conn: Any) -> Iterator[None]:
    """The driver's converters for one query, swapped in and back on this connection: mysqlclient keeps
    them in ``conn.converter``, PyMySQL in ``conn.decoders`` (same MySQL field type numbers)."""
    attr = "converter" if isinstance(getattr(conn, "converter", None), dict) else "decoders"
    base = getattr(conn, attr, None)
    if not isinstance(base, dict):
        yield
        return
    # the field type numbers are MySQL's own, the same in both drivers
    decimal_t, newdecimal_t, date_t, timestamp_t, datetime_t = 0, 246, 10, 7, 12

    fast = dict(base)
    # DECIMAL and DATETIME/TIMESTAMP stay the text MariaDB sent: that text is their canonical form, and
    # building Decimal/datetime objects would be most of the cost; its DATE parser is Python (~1 us)
    for t in (decimal_t, newdecimal_t, datetime_t, timestamp_t):
        fast[t] = str  # mysqlclient decodes for ``str`` itself; PyMySQL hands over text already
    fast[date_t] = _my_date
    setattr(conn, attr, fast)
    try:
        yield
    finally:
        setattr(conn, attr, base)


def fetch(conn: Any, dialect: Dialect, sql: str, params: Sequence[Any]) -> list[Row]:
    """All rows of a query on a raw DBAPI connection, as :func:`column_read` expects them.

    Use this (not a plain cursor) for SQL built from :func:`table_reader` or :func:`column_read`: on
    MariaDB it reads DECIMAL and DATETIME/TIMESTAMP as the text the server sent, which is what their
    canonical forms assume. ``params`` is always passed (as a tuple), so ``%%`` in the SQL means ``%``.
    """
    cur = conn.cursor()
    try:
        if dialect is Dialect.MYSQL:
            with _mysql_converters(conn):
                cur.execute(sql, tuple(params))
                rows = cur.fetchall()
        else:
            cur.execute(sql, tuple(params))
            rows = cur.fetchall()
    finally:
        cur.close()
    return rows if isinstance(rows, list) else list(rows)
