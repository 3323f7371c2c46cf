"""Keys as JSON: cursors and range bounds travel through heartbeats and workflow history.

A key is a tuple of column values; on the wire it is a list of JSON scalars, decoded back with the key
column kinds. Only key values ever travel this way, never whole rows (rule 6, docs/architecture.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from typing import Any

from dualwrite.store import Kind

Key = tuple[Any, ...]
WireKey = list[Any]


def encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "b64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    raise TypeError(f"cannot use a {type(value).__name__} as a key value")


def decode_value(value: Any, kind: Kind) -> Any:
    if value is None:
        return None
    if kind is Kind.INT:
        return int(value)
    if kind is Kind.DECIMAL:
        return decimal.Decimal(value)
    if kind is Kind.UUID:
        return uuid.UUID(value) if isinstance(value, str) else value
    if kind is Kind.BYTES and isinstance(value, str) and value.startswith("b64:"):
        return base64.b64decode(value[4:])
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return dt.datetime.fromisoformat(value)
    if kind is Kind.DATE:
        return dt.date.fromisoformat(value)
    if kind is Kind.TIME:
        return dt.time.fromisoformat(value)
    return value


def encode_key(key: Key | None) -> WireKey | None:
    return None if key is None else [encode_value(v) for v in key]


def decode_key(wire: Sequence[Any] | None, kinds: Sequence[Kind]) -> Key | None:
    if wire is None:
        return None
    if len(wire) != len(kinds):
        raise ValueError(f"key has {len(wire)} parts, expected {len(kinds)}")
    return tuple(decode_value(v, k) for v, k in zip(wire, kinds, strict=True))


def key_for_store(key: Key, kinds: Sequence[Kind], dialect: str) -> Key:
    """Adapt key values to what a driver accepts (MariaDB and SQLite keep UUIDs as text)."""
    if dialect == "postgresql":
        return key
    return tuple(str(v) if isinstance(v, uuid.UUID) else v for v in key)
