"""Canonical values: the same logical data, stored in PostgreSQL, MariaDB and SQLite, reads back equal.

Every common column type is written through each engine's own driver, in the form that engine keeps it
(MariaDB's JSON as text with its own spacing, SQLite's decimals as REAL and timestamps as text with an
offset, ...), read back the way verification reads it, and compared: canonical rows and their digests must
be equal across the three engines, and must differ as soon as one value differs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dualwrite import canonical
from dualwrite.canonical import NAN, RowCanon, canonical_row, canonical_value, row_digest
from dualwrite.store import Dialect, Kind, Store
from dualwrite.stores.sql import fetch, table_reader

COLUMNS = ["id", "i", "big", "amount", "ratio", "flag", "name", "body", "blob", "day", "at", "at_tz", "doc",
           "uid", "at0"]

DDL = {
    Dialect.POSTGRESQL: """CREATE TABLE {t} (id int PRIMARY KEY, i int, big bigint, amount numeric(12,2),
        ratio double precision, flag boolean, name varchar(80), body text, blob bytea, day date,
        at timestamp, at_tz timestamptz, doc jsonb, uid uuid, at0 timestamp(0))""",
    Dialect.MYSQL: """CREATE TABLE {t} (id int PRIMARY KEY, i int, big bigint, amount decimal(12,2),
        ratio double, flag boolean, name varchar(80), body text, `blob` varbinary(200), day date,
        at datetime(6), at_tz timestamp(6) NULL, doc json, uid uuid, at0 datetime)""",
    Dialect.SQLITE: """CREATE TABLE {t} (id integer PRIMARY KEY, i int, big bigint, amount numeric(12,2),
        ratio double, flag boolean, name varchar(80), body text, blob blob, day date, at datetime,
        at_tz timestamp, doc json, uid uuid, at0 datetime)""",
}

TZ_PLUS2 = dt.timezone(dt.timedelta(hours=2))
UID = uuid.UUID("5f0c2a1e-9b7d-4c3e-8a21-0d4b6f9e7c11")

# One logical row set; each engine gets it in its own idiom below.
LOGICAL: list[dict[str, Any]] = [
    {"id": 1, "i": 0, "big": 2**62 + 12345, "amount": decimal.Decimal("12345.60"), "ratio": 0.1,
     "flag": True, "name": "Grüße, Zoë — ✓ 😀 日本語", "body": "line1\nline2\ttab 'quote' \"dq\" \\ back",
     "blob": b"\x00\xff\x10bin\x00", "day": dt.date(2024, 2, 29),
     "at": dt.datetime(2024, 3, 1, 12, 30, 45, 123456),
     "at_tz": dt.datetime(2024, 3, 1, 14, 30, 45, 654321, tzinfo=TZ_PLUS2),
     "doc": {"b": [1, 2.5, {"z": None, "a": "ü"}], "a": True, "n": 10}, "uid": UID,
     "at0": dt.datetime(2020, 2, 29, 23, 59, 58)},
    {"id": 2, **{c: None for c in COLUMNS[1:]}},
    {"id": 3, "i": -2147483648, "big": -(2**63), "amount": decimal.Decimal("-0.05"), "ratio": -1.5e-300,
     "flag": False, "name": "", "body": "MiXeD CaSe", "blob": b"", "day": dt.date(1970, 1, 1),
     "at": dt.datetime(1999, 12, 31, 23, 59, 59), "at_tz": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
     "doc": [], "uid": uuid.UUID(int=0), "at0": dt.datetime(1, 1, 1)},
]


def _pg_params(row: dict[str, Any]) -> list[Any]:
    from psycopg.types.json import Jsonb

    out = dict(row)
    if out["doc"] is not None:
        out["doc"] = Jsonb(out["doc"])
    return [out[c] for c in COLUMNS]


def _my_params(row: dict[str, Any]) -> list[Any]:
    out = dict(row)
    if out["at_tz"] is not None:  # a MariaDB TIMESTAMP is written in the session zone (UTC)
        out["at_tz"] = out["at_tz"].astimezone(dt.UTC).replace(tzinfo=None)
    if out["doc"] is not None:  # MariaDB keeps JSON text as given: spacing and key order differ
        out["doc"] = json.dumps(out["doc"], indent=1)
    if out["uid"] is not None:
        out["uid"] = str(out["uid"]).upper()
    return [out[c] for c in COLUMNS]


def _sqlite_params(row: dict[str, Any]) -> list[Any]:
    out = dict(row)
    if out["amount"] is not None:
        out["amount"] = str(out["amount"])  # numeric affinity stores it as REAL
    for c in ("day", "at", "at0"):
        if out[c] is not None:
            out[c] = out[c].isoformat() if c == "day" else out[c].isoformat(sep=" ")
    if out["at_tz"] is not None:  # text with the original offset, as an application would store it
        out["at_tz"] = out["at_tz"].astimezone(TZ_PLUS2).isoformat()
    if out["doc"] is not None:
        out["doc"] = json.dumps(out["doc"], sort_keys=False)
    if out["uid"] is not None:
        out["uid"] = str(out["uid"])
    return [out[c] for c in COLUMNS]


PARAMS: dict[Dialect, Callable[[dict[str, Any]], list[Any]]] = {
    Dialect.POSTGRESQL: _pg_params, Dialect.MYSQL: _my_params, Dialect.SQLITE: _sqlite_params,
}


def _load(store: Store, table: str, rows: list[dict[str, Any]]) -> None:
    cols = ", ".join(store.quote(c) for c in COLUMNS)
    ph = ", ".join([store.paramstyle] * len(COLUMNS))
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(DDL[store.dialect].format(t=store.quote(table)))
        for r in rows:
            cur.execute(f"INSERT INTO {store.quote(table)} ({cols}) VALUES ({ph})", PARAMS[store.dialect](r))
        cur.close()
        conn.commit()


def _read_fast(store: Store, table: str) -> list[tuple[Any, ...]]:
    """Read as verification does: per-column SQL rewrites and normalisers chosen once."""
    info = store.describe(table, refresh=True)
    exprs, canon = table_reader(info, store.dialect, store.quote, COLUMNS, ["id"])
    with store.connect() as conn:
        rows = fetch(conn, store.dialect, f"SELECT {', '.join(exprs)} FROM {store.quote(table)} "
                               "ORDER BY id", [])
        conn.rollback()
    return canon.rows(rows)


def _read_slow(store: Store, table: str) -> list[tuple[Any, ...]]:
    """Read raw driver values and canonicalise each with the generic, type-dispatching path."""
    info = store.describe(table, refresh=True)
    kinds = [info.columns[c].kind for c in COLUMNS]
    scales = [info.columns[c].scale for c in COLUMNS]
    cols = ", ".join(store.quote(c) for c in COLUMNS)
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {cols} FROM {store.quote(table)} ORDER BY id")
        raw = [tuple(r) for r in cur.fetchall()]
        conn.rollback()
    return [canonical_row(r, kinds, scales) for r in raw]


@pytest.fixture
def three(pg_old: Store, my_old: Store, sqlite_old: Store, table_name: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for store in (pg_old, my_old, sqlite_old):
        _load(store, table_name, LOGICAL)
        out[store.dialect.value] = [_read_fast(store, table_name), _read_slow(store, table_name)]
    return out


def test_kinds_are_what_the_test_means(pg_old: Store, my_old: Store, sqlite_old: Store, table_name: str) -> None:
    expect = [Kind.INT, Kind.INT, Kind.INT, Kind.DECIMAL, Kind.FLOAT, Kind.BOOL, Kind.TEXT, Kind.TEXT, Kind.BYTES,
              Kind.DATE, Kind.TIMESTAMP, None, Kind.JSON, Kind.UUID, Kind.TIMESTAMP]
    for store in (pg_old, my_old, sqlite_old):
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute(DDL[store.dialect].format(t=store.quote(table_name)))
            conn.commit()
        info = store.describe(table_name, refresh=True)
        got = [info.columns[c].kind for c in COLUMNS]
        assert [g for g, e in zip(got, expect, strict=True) if e is not None] == [e for e in expect if e], store
        assert got[11] in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ)


def test_equal_data_is_canonically_equal_on_all_engines(three: dict[str, list[Any]]) -> None:
    pg_fast, pg_slow = three["postgresql"]
    for engine, (fast, slow) in three.items():
        assert fast == slow, f"{engine}: fast path and generic path disagree"
        for i, (a, b) in enumerate(zip(fast, pg_fast, strict=True)):
            for col, x, y in zip(COLUMNS, a, b, strict=True):
                assert x == y, f"{engine} row {i} column {col}: {x!r} != {y!r} (postgresql)"
            assert row_digest(a) == row_digest(b), f"{engine} row {i}"
            assert hash(a) == hash(b)


def test_canonical_forms_are_the_documented_ones(three: dict[str, list[Any]]) -> None:
    row = dict(zip(COLUMNS, three["mysql"][0][0], strict=True))
    assert row["amount"] == "12345.60"  # text at the column's scale
    assert dict(zip(COLUMNS, three["mysql"][0][2], strict=True))["amount"] == "-0.05"
    assert row["flag"] is True
    assert row["at_tz"] == "2024-03-01 12:30:45.654321"  # UTC
    assert row["at"] == "2024-03-01 12:30:45.123456"
    assert dict(zip(COLUMNS, three["sqlite"][0][2], strict=True))["at"] == "1999-12-31 23:59:59.000000"
    assert row["at0"] == "2020-02-29 23:59:58.000000"  # MariaDB DATETIME(0) read as DATETIME(6)
    assert dict(zip(COLUMNS, three["postgresql"][0][2], strict=True))["at0"] == "0001-01-01 00:00:00.000000"
    assert row["uid"] == str(UID)
    assert row["blob"] == b"\x00\xff\x10bin\x00"
    assert json.loads(row["doc"]) == {"a": True, "b": [1, 2.5, {"a": "ü", "z": None}], "n": 10}
    assert row["doc"] == '{"a":true,"b":[1,2.5,{"a":"ü","z":null}],"n":10}'
    nulls = three["sqlite"][0][1]
    assert nulls == (2, *([None] * (len(COLUMNS) - 1)))


def test_unequal_data_hashes_differently(three: dict[str, list[Any]], pg_old: Store, table_name: str) -> None:
    base = three["postgresql"][0][0]
    changed = {
        "i": 1, "big": 2**62 + 12346, "amount": "12345.61", "ratio": 0.1000001, "flag": False,
        "name": "Grüße, Zoe — ✓ 😀 日本語", "body": "line1\nline2\ttab 'quote' \"dq\" \\ Back", "blob": b"\x00\xff",
        "day": dt.date(2024, 3, 1), "at": "2024-03-01 12:30:45.123457",
        "at_tz": "2024-03-01 12:30:46.654321", "doc": '{"a":true}', "uid": str(uuid.UUID(int=1)),
    }
    digests = {row_digest(base)}
    for col, value in changed.items():
        row = list(base)
        row[COLUMNS.index(col)] = value
        assert tuple(row) != base
        digests.add(row_digest(tuple(row)))
    assert len(digests) == len(changed) + 1
    # a NULL is not an empty string, a zero or False
    for col in ("name", "i", "flag", "blob"):
        row = list(base)
        row[COLUMNS.index(col)] = None
        assert row_digest(tuple(row)) != row_digest(base)
    # and a value changed in the database reads back different
    with pg_old.connect() as conn:
        conn.execute(f"UPDATE {table_name} SET name = 'grüße, Zoë — ✓ 😀 日本語' WHERE id = 1")
        conn.commit()
    again = _read_fast(pg_old, table_name)
    assert row_digest(again[0]) != row_digest(base)
    assert again[1:] == three["postgresql"][0][1:]


def test_value_normalisers() -> None:
    assert canonical_value(0.30000000000000004, Kind.DECIMAL, 2) == "0.30"
    assert canonical_value(decimal.Decimal("2.345"), Kind.DECIMAL, 2) == "2.35"  # half away from zero
    assert canonical_value(decimal.Decimal("-2.345"), Kind.DECIMAL, 2) == "-2.35"
    assert canonical_value("-0.001", Kind.DECIMAL, 2) == "0.00"
    assert canonical_value(7, Kind.DECIMAL, 3) == "7.000"
    assert canonical_value("1.50", Kind.DECIMAL) == decimal.Decimal("1.5")  # no scale: a Decimal
    two_am_plus2 = dt.datetime(2024, 1, 1, 2, tzinfo=TZ_PLUS2)
    assert canonical_value(two_am_plus2, Kind.TIMESTAMPTZ) == "2024-01-01 00:00:00.000000"
    assert canonical_value(float("nan"), Kind.FLOAT) == NAN
    assert canonical_value(dt.timedelta(hours=25), Kind.TIME) == dt.timedelta(hours=25)  # not a time of day
    assert canonical_value(dt.timedelta(hours=1, microseconds=5), Kind.TIME) == dt.time(1, 0, 0, 5)
    assert canonical_value("2024-01-01T00:00:00Z", Kind.TIMESTAMPTZ) == "2024-01-01 00:00:00.000000"
    assert canonical_value("not a date", Kind.TIMESTAMP) == "not a date"  # surfaces as a difference
    assert canonical_value("3", Kind.INT) == 3
    assert canonical_value(2, Kind.BOOL) is True
    assert canonical_value("t", Kind.BOOL) is True
    assert canonical_value('{"x": 1.0}', Kind.JSON) == canonical_value({"x": 1}, Kind.JSON) == '{"x":1}'
    assert canonical_value(memoryview(b"ab"), Kind.BYTES) == b"ab"
    assert canonical_value(UID.bytes, Kind.UUID) == str(UID)
    assert canonical_value(5, Kind.TEXT) == "5"
    assert row_digest((decimal.Decimal("1.50"),)) == row_digest((decimal.Decimal("1.5"),)) == row_digest((1.5,))
    assert row_digest(("a", "bc")) != row_digest(("ab", "c"))


def test_row_canon_compiles_only_what_is_needed() -> None:
    same = RowCanon([None, None])
    rows = [(1, "a"), (2, None)]
    assert same.rows(rows) is rows
    canon = RowCanon([None, canonical.canon_uuid, None], constants={2: "fixed"})
    assert canon.rows([(1, UID, None), (2, None, "x")]) == [(1, str(UID), "fixed"), (2, None, "fixed")]
