"""One text per SQL value, so a Redis hash field (or JSON document member) compares equal to its SQL row.

Redis stores strings; SQL drivers hand back ints, Decimals, datetimes, bytes. A value is first put in its
canonical form (:mod:`dualwrite.canonical`, the form cross-engine verification compares) and then written
as the text below, which :func:`decode_value` turns back into that same canonical form. Verification of a
Redis target therefore compares canonical values on both sides, exactly as between two SQL engines.

=============  =====================================================================================
kind           text in Redis
=============  =====================================================================================
NULL           no field at all (a hash field or JSON member is absent)
int            decimal digits: ``-42``
bool           ``true`` / ``false``
decimal        exact plain text with the column's scale: ``12.30`` (never a float)
float          Python's shortest round-trip ``repr``: ``0.1``; ``NaN``, ``inf``, ``-inf``
text           the text itself (UTF-8)
bytes          standard base64 (a JSON document cannot hold raw bytes; a hash holds the same text)
date           ``YYYY-MM-DD``
time           ``HH:MM:SS.ffffff``
timestamp      ``YYYY-MM-DDTHH:MM:SS.ffffff`` in UTC without an offset (every store session runs in UTC)
timestamptz    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``: the instant in UTC, with its offset written out
json           compact JSON with sorted keys (integral numbers as integers)
uuid           lower-case hyphenated
=============  =====================================================================================
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.canonical import canonical_value, decimal_text
from dualwrite.store import Kind

__all__ = ["ValueCodec", "column_encoder", "decode_value", "encode_value", "native_value"]

Encoder = Callable[[Any], str | None]
_UTC = dt.UTC


def encode_value(value: Any, kind: Kind, scale: int | None = None) -> str | None:
    """The Redis text of one SQL value of a column of ``kind``; None for NULL (the field is left out)."""
    canon = canonical_value(value, kind, scale)
    if canon is None:
        return None
    if kind is Kind.BOOL and isinstance(canon, bool):
        return "true" if canon else "false"
    if kind is Kind.BYTES and isinstance(canon, bytes):
        return base64.b64encode(canon).decode("ascii")
    if kind is Kind.DECIMAL and isinstance(canon, decimal.Decimal):
        return format(canon, "f")
    if kind is Kind.FLOAT and isinstance(canon, float):
        return repr(canon)
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ) and isinstance(canon, str):
        text = canon.replace(" ", "T", 1)
        return text + "+00:00" if kind is Kind.TIMESTAMPTZ else text
    if kind is Kind.TIME and isinstance(canon, dt.time):
        return canon.isoformat(timespec="microseconds")
    if isinstance(canon, dt.date):
        return canon.isoformat()
    return str(canon)


def column_encoder(kind: Kind, scale: int | None = None) -> Encoder:
    """:func:`encode_value` for one column, chosen once: the values drivers hand back for the common kinds
    (``int``, ``str``, ``bool``, ``datetime``, ``Decimal`` at a scale) take a direct path to the same text;
    anything else goes through :func:`encode_value` (a backfill encodes every value of every row)."""
    def generic(v: Any) -> str | None:
        return encode_value(v, kind, scale)

    if kind is Kind.INT:
        return lambda v: str(v) if type(v) is int else generic(v)
    if kind is Kind.TEXT:
        return lambda v: v if type(v) is str else generic(v)
    if kind is Kind.BOOL:
        return lambda v: ("true" if v else "false") if type(v) is bool else generic(v)
    if kind is Kind.DECIMAL and scale is not None:
        text = decimal_text(scale)

        def decimal_encoder(v: Any) -> str | None:
            if type(v) is decimal.Decimal:
                out = text(v)
                if isinstance(out, str):
                    return out
            return generic(v)
        return decimal_encoder
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        suffix = "+00:00" if kind is Kind.TIMESTAMPTZ else ""

        def timestamp_encoder(v: Any) -> str | None:
            if type(v) is dt.datetime:
                ts: dt.datetime = v if v.tzinfo is None else v.astimezone(_UTC).replace(tzinfo=None)
                return ts.isoformat(timespec="microseconds") + suffix
            return generic(v)
        return timestamp_encoder
    return generic


def decode_value(text: str | bytes | None, kind: Kind, scale: int | None = None) -> Any:
    """The canonical form (:mod:`dualwrite.canonical`) of a value read back from Redis."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode()
    if kind is Kind.BYTES:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return text  # not ours: compares unequal to every SQL value, as it should
    return canonical_value(text, kind, scale)


def native_value(canon: Any, kind: Kind) -> Any:
    """A canonical value as the Python value a SQL driver hands out and takes: ``Decimal`` for decimals
    (canonical text), ``datetime`` for timestamps (canonical ISO text; with time zone: aware, in UTC).
    What the adapter returns for reads served by Redis, and what the mirror back into SQL writes."""
    if not isinstance(canon, str):
        return canon
    if kind is Kind.DECIMAL:
        try:
            return decimal.Decimal(canon)
        except decimal.InvalidOperation:
            return canon
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        try:
            parsed = dt.datetime.fromisoformat(canon.replace(" ", "T", 1))
        except ValueError:
            return canon
        if kind is Kind.TIMESTAMPTZ:
            return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed
        return parsed
    return canon


@dataclass(frozen=True)
class ValueCodec:
    """The encoding of one table's mapped columns, chosen once (the same order as the key-ordered rows)."""

    columns: tuple[str, ...]
    kinds: tuple[Kind, ...]
    scales: tuple[int | None, ...]
    encoders: tuple[Encoder, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoders", tuple(column_encoder(k, s) for k, s in
                                                   zip(self.kinds, self.scales, strict=True)))

    def fields(self, row: Sequence[Any]) -> dict[str, str]:
        """A row as Redis hash fields: NULL columns are left out."""
        out: dict[str, str] = {}
        for name, encode, value in zip(self.columns, self.encoders, row, strict=True):
            if value is not None:
                text = encode(value)
                if text is not None:
                    out[name] = text
        return out

    def pairs(self, row: Sequence[Any]) -> list[str]:
        """The same fields as one flat list, field name then text (an ``HSET``'s arguments)."""
        out: list[str] = []
        for name, encode, value in zip(self.columns, self.encoders, row, strict=True):
            if value is not None:
                text = encode(value)
                if text is not None:
                    out += (name, text)
        return out

    def canonical_row(self, fields: dict[str, str] | dict[bytes, bytes]) -> tuple[Any, ...]:
        """A Redis hash (or JSON document) back as the canonical row verification compares."""
        get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        return tuple(decode_value(get.get(name), kind, scale)
                     for name, kind, scale in zip(self.columns, self.kinds, self.scales, strict=True))
