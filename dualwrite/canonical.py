"""Canonical values: one Python form per column kind, so equal data compares equal on every engine.

Drivers disagree about the same logical value: PostgreSQL hands back ``True``, ``uuid.UUID`` objects and
aware datetimes; MariaDB hands back ``1``, text and naive datetimes (``timedelta`` for a TIME); SQLite
hands back whatever text or number was stored. Cross-engine verification and the shadow-read comparator
compare *canonical* values instead:

=============  ===============================================================================
kind           canonical form
=============  ===============================================================================
int            ``int``
bool           ``bool``
decimal        with a known scale: its plain text with exactly that many decimals (``"12.30"``),
               rounded half away from zero as the engines round on insert; without a scale
               (PostgreSQL's bare ``numeric``): ``Decimal``
float          ``float``; NaN becomes the string ``"NaN"`` (NaN never equals itself)
text           ``str``
bytes          ``bytes``
date           ``datetime.date``
time           ``datetime.time`` (naive)
timestamp(tz)  text ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (a naive input is taken to be UTC
               already: every store session runs in UTC)
json           compact text with sorted keys, integral numbers written as integers
uuid           lower-case hyphenated ``str``
other          ``str``
NULL           ``None``
=============  ===============================================================================

Speed matters here (a million rows per verification), so a normaliser is chosen *once per column*, and
``None`` is chosen when a driver already returns the canonical form; :class:`RowCanon` then compiles the
row transformation into one tuple-building function so a row costs one Python call, not one per column.
Decimals and timestamps are canonical as *text* because every engine can render that text itself
(PostgreSQL ``x::text`` / ``round(x, s)::text`` and ``to_char``; MariaDB sends DECIMAL and DATETIME(6)
as exactly that text, read untouched by :func:`fetch`): the driver then builds a cheap string instead of
a ``Decimal`` or ``datetime`` (most of the Python time of a cross-engine comparison otherwise), and
SQLite's stored text or numbers and Python values are formatted the same way here. Read rows selected
with :func:`table_reader` / :func:`column_read` through :func:`fetch`.
Comparison and hashing of the resulting tuples happen in C (tuple equality, ``hash``); :func:`row_digest`
adds a digest that is stable across processes for callers that store or ship it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.store import Dialect, Kind, TableInfo

Normalizer = Callable[[Any], Any]
Row = tuple[Any, ...]

#: what a float NaN becomes: NaN != NaN would make every row holding one look different
NAN = "NaN"

_UTC = dt.UTC


# ---------------------------------------------------------------------------------------------------------
# per-kind normalisers: each accepts anything a driver (or a Python transform) may produce for the kind
# and never raises: a value that cannot be read as the kind is returned unchanged, so it compares unequal
# to the other side's proper value and surfaces as a field difference instead of aborting a verification.


def canon_int(v: Any) -> Any:
    if type(v) is int:
        return v
    try:
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            return int(v.strip())
        if isinstance(v, float | decimal.Decimal) and v == int(v):
            return int(v)
        if isinstance(v, bool):
            return int(v)
    except (ValueError, ArithmeticError, UnicodeDecodeError):
        pass
    return v


def canon_bool(v: Any) -> Any:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("t", "true", "1", "y", "yes", "on"):
            return True
        if low in ("f", "false", "0", "n", "no", "off"):
            return False
        return v
    try:
        return bool(v)
    except (TypeError, ValueError):
        return v


def canon_decimal(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return v
    try:
        if isinstance(v, float):
            # repr is the shortest text that round-trips: 0.1 stays 0.1, not 0.1000000000000000055...
            return decimal.Decimal(repr(v)) if math.isfinite(v) else v
        if isinstance(v, int):
            return decimal.Decimal(v)
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            return decimal.Decimal(v.strip())
    except (decimal.InvalidOperation, ValueError, UnicodeDecodeError):
        pass
    return v


def decimal_quantizer(scale: int) -> Normalizer:
    """Round to ``scale`` digits the way the engines round on insert (half away from zero)."""
    exp = decimal.Decimal(1).scaleb(-scale)

    def quantize(v: Any) -> Any:
        d = canon_decimal(v)
        if not isinstance(d, decimal.Decimal) or not d.is_finite():
            return d
        try:
            return d.quantize(exp, rounding=decimal.ROUND_HALF_UP)
        except decimal.InvalidOperation:
            return d

    return quantize


def decimal_text(scale: int) -> Normalizer:
    """The canonical text of a decimal with ``scale`` digits: ``"-12.30"``; never ``"-0.00"``."""
    quantize = decimal_quantizer(scale)

    def text(v: Any) -> Any:
        d = quantize(v)
        if not isinstance(d, decimal.Decimal):
            return d
        if d.is_zero():
            d = d.copy_abs()
        return format(d, "f")

    return text


def canon_float(v: Any) -> Any:
    if type(v) is float:
        return v if v == v else NAN
    try:
        if isinstance(v, bytes):
            v = v.decode()
        f = float(v)
    except (TypeError, ValueError, UnicodeDecodeError):
        return v
    return f if f == f else NAN


def canon_text(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        try:
            return bytes(v).decode()
        except UnicodeDecodeError:
            return bytes(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict | list):
        return canon_json(v)
    return str(v)


def canon_bytes(v: Any) -> Any:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    if isinstance(v, str):
        return v.encode()
    return v


def canon_date(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    try:
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            return dt.date.fromisoformat(v.strip()[:10])
    except (ValueError, UnicodeDecodeError):
        pass
    return v


def canon_time(v: Any) -> Any:
    if isinstance(v, dt.time):
        return v.replace(tzinfo=None) if v.tzinfo is not None else v
    if isinstance(v, dt.timedelta):  # MariaDB TIME
        if dt.timedelta(0) <= v < dt.timedelta(days=1):
            return (dt.datetime.min + v).time()
        return v
    try:
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            return dt.time.fromisoformat(v.strip())
    except (ValueError, UnicodeDecodeError):
        pass
    return v


def canon_timestamp(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            return v
        return v.astimezone(_UTC).replace(tzinfo=None)
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    try:
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            return canon_timestamp(dt.datetime.fromisoformat(v.strip()))
    except (ValueError, UnicodeDecodeError):
        pass
    return v


def canon_timestamp_text(v: Any) -> Any:
    """Naive UTC ``YYYY-MM-DD HH:MM:SS.ffffff``, the text PostgreSQL and MariaDB render in SQL."""
    ts = canon_timestamp(v)
    if isinstance(ts, dt.datetime):
        return ts.isoformat(sep=" ", timespec="microseconds")
    return ts


def _json_numbers(obj: Any) -> Any:
    """Integral floats become ints (1.0 == 1 in JSON, and jsonb agrees); containers recursively."""
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, dict):
        return {str(k): _json_numbers(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_numbers(x) for x in obj]
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    return obj


def _json_dump(obj: Any) -> str:
    return json.dumps(_json_numbers(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True)


def canon_json_text(v: Any) -> Any:
    """JSON held as text (MariaDB, SQLite, PostgreSQL cast to text)."""
    if isinstance(v, bytes | bytearray | memoryview):
        v = bytes(v).decode()
    if not isinstance(v, str):
        return canon_json(v)
    try:
        return _json_dump(json.loads(v))
    except ValueError:
        return v


def canon_json(v: Any) -> Any:
    """JSON from anywhere: text is parsed (as the copy does), anything else is taken as parsed already."""
    if isinstance(v, str | bytes | bytearray | memoryview):
        return canon_json_text(v)
    try:
        return _json_dump(v)
    except (TypeError, ValueError):
        return v


def canon_uuid(v: Any) -> Any:
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, str):
        if len(v) == 36 and v.islower():
            return v
        try:
            return str(uuid.UUID(v))
        except ValueError:
            return v
    if isinstance(v, bytes) and len(v) == 16:
        return str(uuid.UUID(bytes=v))
    if isinstance(v, bytes):
        return canon_uuid(v.decode(errors="replace"))
    return v


def canon_other(v: Any) -> Any:
    return v if isinstance(v, str) else str(v)


_GENERIC: dict[Kind, Normalizer] = {
    Kind.INT: canon_int, Kind.BOOL: canon_bool, Kind.DECIMAL: canon_decimal, Kind.FLOAT: canon_float,
    Kind.TEXT: canon_text, Kind.BYTES: canon_bytes, Kind.DATE: canon_date, Kind.TIME: canon_time,
    Kind.TIMESTAMP: canon_timestamp_text, Kind.TIMESTAMPTZ: canon_timestamp_text, Kind.JSON: canon_json,
    Kind.UUID: canon_uuid, Kind.OTHER: canon_other,
}


def canonical_value(value: Any, kind: Kind, scale: int | None = None) -> Any:
    """The canonical form of one value of a column of ``kind`` (the slow, always-correct path)."""
    if value is None:
        return None
    if kind is Kind.DECIMAL and scale is not None:
        return decimal_text(scale)(value)
    return _GENERIC[kind](value)


# ---------------------------------------------------------------------------------------------------------
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
    generic = _GENERIC[kind]
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


# ---------------------------------------------------------------------------------------------------------
# whole rows


class RowCanon:
    """Canonicalise rows of one shape with one compiled function per row.

    The function is generated from column *positions* only (``lambda r: (r[0], f2(r[1]) ...)``): a
    Python loop over columns per row would cost several times more than the drivers take to read it.
    """

    def __init__(self, normalizers: Sequence[Normalizer | None], constants: dict[int, Any] | None = None
                 ) -> None:
        """``constants``: positions whose canonical value is fixed (a new column's default)."""
        self.width = len(normalizers)
        self.constants = dict(constants or {})
        self.active = {i: f for i, f in enumerate(normalizers) if f is not None and i not in self.constants}
        needed = self.active or self.constants
        self._fn: Callable[[Row], Row] | None = self._compile() if needed else None

    def _compile(self) -> Callable[[Row], Row]:
        parts = []
        for i in range(self.width):
            if i in self.constants:
                parts.append(f"c{i}")
            elif i in self.active:
                parts.append(f"(None if r[{i}] is None else f{i}(r[{i}]))")
            else:
                parts.append(f"r[{i}]")
        src = f"lambda r: ({', '.join(parts)},)"
        env: dict[str, Any] = {f"f{i}": f for i, f in self.active.items()}
        env.update({f"c{i}": c for i, c in self.constants.items()})
        # the source text holds nothing but positions and generated names
        return eval(src, env)  # type: ignore[no-any-return]

    def row(self, row: Row) -> Row:
        return row if self._fn is None else self._fn(row)

    def rows(self, rows: list[Row]) -> list[Row]:
        """Canonical rows (the same list when nothing needs normalising)."""
        if self._fn is None:
            return rows
        return list(map(self._fn, rows))


def canonical_row(values: Sequence[Any], kinds: Sequence[Kind], scales: Sequence[int | None] | None = None
                  ) -> Row:
    """Canonical form of a whole row by kinds (the slow, always-correct path; tests and ad-hoc use)."""
    sc = scales or [None] * len(kinds)
    return tuple(canonical_value(v, k, s) for v, k, s in zip(values, kinds, sc, strict=True))


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


# ---------------------------------------------------------------------------------------------------------
# stable encoding and digest


def _encode_value(v: Any) -> str:
    if v is None:
        return "N"
    if isinstance(v, bool):
        return "b1" if v else "b0"
    if isinstance(v, int):
        return f"n{v}"
    if isinstance(v, decimal.Decimal):
        if not v.is_finite():
            return f"x{v}"
        return "n" + _plain_decimal(v)
    if isinstance(v, float):
        # the exact binary value, so digests agree with ==: 1.5 == Decimal("1.5") but 0.1 != Decimal("0.1")
        return "n" + _plain_decimal(decimal.Decimal(v)) if math.isfinite(v) else f"x{v!r}"
    if isinstance(v, str):
        return "s" + v
    if isinstance(v, bytes):
        return "y" + v.hex()
    if isinstance(v, dt.datetime):
        return "t" + v.isoformat()
    if isinstance(v, dt.date):
        return "d" + v.isoformat()
    if isinstance(v, dt.time):
        return "h" + v.isoformat()
    return "o" + str(v)


def _plain_decimal(d: decimal.Decimal) -> str:
    """1.50 -> '1.5', 100 -> '100', -0 -> '0': equal numbers, equal text."""
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def encode_row(row: Sequence[Any]) -> bytes:
    """A deterministic byte encoding of a canonical row (length-prefixed, so no separator can collide)."""
    out = []
    for v in row:
        s = _encode_value(v).encode("utf-8", "surrogatepass")
        out.append(f"{len(s)}:".encode() + s)
    return b"".join(out)


def row_digest(row: Sequence[Any]) -> int:
    """A 64-bit digest of a canonical row, stable across processes and machines (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(encode_row(row), digest_size=8).digest(), "big", signed=True)
