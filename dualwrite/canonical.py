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
(the SQL kind's :mod:`dualwrite.stores.sql._canon_read` asks the engines for it): the driver then builds a
cheap string instead of a ``Decimal`` or ``datetime`` (most of the Python time of a cross-engine
comparison otherwise), and SQLite's stored text or numbers and Python values are formatted the same way
here. This module knows values only, no store: a key-value store's kind canonicalises with it too.
Comparison and hashing of the resulting tuples happen in C (tuple equality, ``hash``); :func:`row_digest`
adds a digest that is stable across processes for callers that store or ship it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite.store import Kind

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


#: the always-correct normaliser of each kind (store kinds pick faster ones where a driver allows)
GENERIC: dict[Kind, Normalizer] = {
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
    return GENERIC[kind](value)


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
