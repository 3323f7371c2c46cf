"""The two COPY fast paths into PostgreSQL, called chunk by chunk on real engines.

What a migration relies on: a chunk carries exactly the rows of its key range, every value arrives as it
was (NULL, empty text, the text ``\\N``, tabs, newlines, backslashes, emoji, bytes, decimals, fractions of
a second), for every kind of key (integer, composite, CHAR(36) -> uuid, unicode text); a chunk that meets
rows already written falls back to a guarded merge where a newer live write wins (rule 4, docs/architecture.md); a value
PostgreSQL cannot read is reported with a data-error SQLSTATE so the copy can take the row path; and a
MariaDB connection is left as it was found, also when the read fails.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dualwrite import fastpath
from dualwrite.mapping import TableMapping, compile_table, identity_mapping
from dualwrite.spec import ColumnMap, TableSpec
from dualwrite.sqlgen import Key, source_side, target_side
from dualwrite.store import Dialect, Store

ROUTES = {"pg-binary": "pg_old", "mysql-text": "my_old"}

KEY_COLS = {
    "int": {Dialect.POSTGRESQL: "id bigint", Dialect.MYSQL: "id BIGINT"},
    "composite": {Dialect.POSTGRESQL: "region text, n integer", Dialect.MYSQL: "region VARCHAR(32), n INT"},
    "uuid": {Dialect.POSTGRESQL: "id uuid", Dialect.MYSQL: "id CHAR(36)"},
    "text": {Dialect.POSTGRESQL: "id text", Dialect.MYSQL: "id VARCHAR(64)"},
}
KEY_NAMES = {"int": "id", "composite": "region, n", "uuid": "id", "text": "id"}
VALUE_COLS = {
    Dialect.POSTGRESQL: "name text, qty integer, amount numeric(12,2), at timestamp, raw bytea, "
                        "score double precision, version bigint NOT NULL",
    Dialect.MYSQL: "name TEXT, qty INT, amount DECIMAL(12,2), at DATETIME(6), raw VARBINARY(16), score DOUBLE, "
                   "version BIGINT NOT NULL",
}
KEYS: dict[str, list[Key]] = {
    "int": [(-7,), (0,), (1,), (2,), (3,), (42,), (2**40,), (9_000_000_000,)],
    "composite": [("apac", 1), ("apac", 2), ("émea", 1), ("Zoë 😀", 3), ("z", -1), ("Z", 0), ("a b", 5),
                  ("a", 7)],
    "uuid": [(str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128)),) for i in range(1, 9)],
    "text": [("a",), ("B",), ("zoë",), ("😀",), ("tab\tkey",), ("x'y",), ("back\\slash",), ("nl\nkey",)],
}
NAMES = [None, "", "\\N", "tab\there", "line\nbreak\r", "back\\slash\\", "zoë 😀 ж", "plain"]


def values(i: int) -> tuple[Any, ...]:
    """The non-key values of row ``i``: NULLs and awkward spellings in every column."""
    return (NAMES[i % len(NAMES)], None if i % 3 == 0 else i * 1000 - 3,
            None if i % 4 == 1 else Decimal(i * 7 - 20) / 100,
            None if i % 5 == 2 else dt.datetime(2024, 2, 29, 23, 59, 59, 10 * i),
            None if i % 3 == 1 else bytes([0, 92, 9, 10, 255 - i]), None if i % 2 else i * 0.5 - 1.25, 1)


def order(key: Key) -> tuple[Any, ...]:
    """Range order: bytewise for text, as on every engine (COLLATE "C", utf8mb4_bin)."""
    return tuple(v.encode() if isinstance(v, str) else v for v in key)


def create(store: Store, table: str, kind: str, rows: list[tuple[Any, ...]], *, extra: str = "") -> None:
    d = store.dialect
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} ({KEY_COLS[kind][d]} NOT NULL, {VALUE_COLS[d]}{extra}, "
                    f"PRIMARY KEY ({KEY_NAMES[kind]}))")
        if rows:
            marks = ", ".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        conn.commit()


def read(store: Store, table: str, kind: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT * FROM {table}")
        out = [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r) for r in cur.fetchall()]
        conn.rollback()
    n = len(KEY_NAMES[kind].split(","))
    return sorted(out, key=lambda r: order(r[:n]))


def source_rows(kind: str) -> list[tuple[Any, ...]]:
    return [(*k, *values(i)) for i, k in enumerate(KEYS[kind])]


def mapping_for(source: Store, target: Store, table: str, *, version: bool = True) -> TableMapping:
    return identity_mapping(source.describe(table, refresh=True), target.describe(table, refresh=True),
                            version="version" if version else None)


def copy_chunk(route: str, source: Store, target: Store, mapping: TableMapping, lo: Key | None, hi: Key | None,
               *, insert_only: bool) -> tuple[int, bool]:
    """One chunk through one fast path, committed the way the copy commits it."""
    src, dst = source_side(mapping, source), target_side(mapping, target)
    if route == "pg-binary":
        with source.connect() as sconn, target.connect() as tconn:
            out = fastpath.pg_binary_chunk(sconn, tconn, mapping, src, dst, lo, hi, insert_only=insert_only)
            tconn.commit()
            sconn.commit()
        return out
    with source.connect() as sconn:
        chunk = fastpath.mysql_read_text_chunk(sconn, mapping, src, lo, hi, fastpath.mysql_text_defaults(mapping))
        sconn.rollback()
    assert chunk.rows == 0 or chunk.nbytes > 0
    with target.connect() as tconn:
        out = fastpath.pg_write_text_chunk(tconn, mapping, dst, chunk, insert_only=insert_only)
        tconn.commit()
    return out


CASES = [(route, kind) for route in ROUTES for kind in KEYS]


@pytest.mark.parametrize(("route", "kind"), CASES)
def test_a_chunk_carries_exactly_its_range_with_every_value_intact(
        request: pytest.FixtureRequest, pg_new: Store, route: str, kind: str, table_name: str) -> None:
    source: Store = request.getfixturevalue(ROUTES[route])
    rows = source_rows(kind)
    create(source, table_name, kind, rows)
    create(pg_new, table_name, kind, [])
    mapping = mapping_for(source, pg_new, table_name)
    n = len(KEY_NAMES[kind].split(","))
    ranked = sorted(KEYS[kind], key=order)
    assert copy_chunk(route, source, pg_new, mapping, ranked[1], ranked[4], insert_only=False) == (3, False)
    wanted = {order(k) for k in ranked[2:5]}
    assert read(pg_new, table_name, kind) == sorted((r for r in rows if order(r[:n]) in wanted),
                                                    key=lambda r: order(r[:n]))
    # the open-ended chunks on either side complete the table
    assert copy_chunk(route, source, pg_new, mapping, None, ranked[1], insert_only=False) == (2, False)
    assert copy_chunk(route, source, pg_new, mapping, ranked[4], None, insert_only=False) == (3, False)
    assert read(pg_new, table_name, kind) == sorted(rows, key=lambda r: order(r[:n]))


@pytest.mark.parametrize(("route", "kind"), CASES)
def test_a_chunk_meeting_written_rows_lets_newer_live_writes_win(
        request: pytest.FixtureRequest, pg_new: Store, route: str, kind: str, table_name: str) -> None:
    source: Store = request.getfixturevalue(ROUTES[route])
    rows = source_rows(kind)
    create(source, table_name, kind, rows)
    n = len(KEY_NAMES[kind].split(","))
    live = (*rows[0][:n], "live write", *rows[0][n + 1:-1], 5)     # newer than the backfill's snapshot
    stale = (*rows[1][:n], "stale image", *rows[1][n + 1:-1], 0)   # older: the backfill's image wins
    create(pg_new, table_name, kind, [live, stale])
    mapping = mapping_for(source, pg_new, table_name)
    assert copy_chunk(route, source, pg_new, mapping, None, None, insert_only=False) == (len(rows), True)
    expected = {order(r[:n]): r for r in rows}
    expected[order(live[:n])] = live
    assert read(pg_new, table_name, kind) == sorted(expected.values(), key=lambda r: order(r[:n]))


@pytest.mark.parametrize("route", ROUTES)
def test_without_a_version_column_a_chunk_never_overwrites(request: pytest.FixtureRequest, pg_new: Store,
                                                           route: str, table_name: str) -> None:
    """Whatever a live mirror wrote is at least as new as the backfill's snapshot: inserts only."""
    source: Store = request.getfixturevalue(ROUTES[route])
    rows = source_rows("text")
    create(source, table_name, "text", rows)
    mirrored = ("zoë", "mirrored", None, None, None, None, None, 0)
    create(pg_new, table_name, "text", [mirrored])
    mapping = mapping_for(source, pg_new, table_name, version=False)
    assert copy_chunk(route, source, pg_new, mapping, None, None, insert_only=True) == (len(rows), True)
    got = {r[0]: r for r in read(pg_new, table_name, "text")}
    assert got["zoë"] == mirrored
    assert sorted(got) == sorted(k[0] for k in KEYS["text"])


@pytest.mark.parametrize("route", ROUTES)
def test_an_empty_chunk_writes_nothing(request: pytest.FixtureRequest, pg_new: Store, route: str,
                                       table_name: str) -> None:
    source: Store = request.getfixturevalue(ROUTES[route])
    create(source, table_name, "int", source_rows("int"))
    create(pg_new, table_name, "int", [])
    mapping = mapping_for(source, pg_new, table_name)
    assert copy_chunk(route, source, pg_new, mapping, (3,), (41,), insert_only=False) == (0, False)
    assert copy_chunk(route, source, pg_new, mapping, (2**41,), None, insert_only=False) == (0, False)
    assert read(pg_new, table_name, "int") == []


def test_a_chunk_larger_than_one_fetch_is_read_in_blocks(my_old: Store, pg_new: Store, table_name: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """MariaDB rows are streamed a bounded number at a time; the blocks still add up to the chunk."""
    monkeypatch.setattr(fastpath, "MYSQL_FETCH_ROWS", 3)
    rows = source_rows("composite")
    create(my_old, table_name, "composite", rows)
    create(pg_new, table_name, "composite", [])
    mapping = mapping_for(my_old, pg_new, table_name)
    with my_old.connect() as conn:
        chunk = fastpath.mysql_read_text_chunk(conn, mapping, source_side(mapping, my_old), None, None, {})
        conn.rollback()
    assert chunk.rows == len(rows) and len(chunk.blocks) == math.ceil(len(rows) / 3)
    with pg_new.connect() as tconn:
        fastpath.pg_write_text_chunk(tconn, mapping, target_side(mapping, pg_new), chunk, insert_only=False)
        tconn.commit()
    assert read(pg_new, table_name, "composite") == sorted(rows, key=lambda r: order(r[:2]))


@pytest.mark.parametrize("route", ROUTES)
def test_spec_defaults_arrive_as_written(request: pytest.FixtureRequest, pg_new: Store, route: str,
                                         table_name: str) -> None:
    """A new column filled with a constant: COPY's special characters in it must not be read as escapes."""
    source: Store = request.getfixturevalue(ROUTES[route])
    create(source, table_name, "int", source_rows("int")[:3])
    create(pg_new, table_name, "int", [], extra=", region text, note text")
    spec = TableSpec(source=table_name, target=table_name, version_column="version",
                     columns={"region": ColumnMap(default="tab\t\\N back\\slash 😀"), "note": ColumnMap(default=None)})
    mapping, problems = compile_table(spec, source.describe(table_name, refresh=True),
                                      pg_new.describe(table_name, refresh=True))
    assert mapping is not None, problems
    if route == "mysql-text":
        assert fastpath.mysql_text_supported(mapping)
        assert list(fastpath.mysql_text_defaults(mapping).values()) == ["tab\\t\\\\N back\\\\slash 😀"]
    assert copy_chunk(route, source, pg_new, mapping, None, None, insert_only=False) == (3, False)
    got = [r[-2:] for r in read(pg_new, table_name, "int")]
    assert got == [("tab\t\\N back\\slash 😀", None)] * 3


def shout(value: str | None) -> str | None:
    """A Python transform (the text path cannot run it)."""
    return None if value is None else value.upper()


def test_a_python_transform_rules_out_the_text_path(my_old: Store, pg_new: Store, table_name: str) -> None:
    create(my_old, table_name, "int", [])
    create(pg_new, table_name, "int", [])
    spec = TableSpec(source=table_name, target=table_name,
                     columns={"name": ColumnMap.model_validate({"transform": "test_fastpath:shout", "from": "name"})})
    mapping, problems = compile_table(spec, my_old.describe(table_name, refresh=True),
                                      pg_new.describe(table_name, refresh=True))
    assert mapping is not None, problems
    assert not fastpath.mysql_text_supported(mapping)
    assert fastpath.mysql_text_supported(mapping_for(my_old, pg_new, table_name))


def test_a_value_postgresql_cannot_read_is_a_data_error_and_nothing_is_written(
        my_old: Store, pg_new: Store, table_name: str) -> None:
    """A lax MariaDB's zero date: the copy falls back to the row path on SQLSTATE class 22."""
    create(my_old, table_name, "int", source_rows("int")[:2])
    with my_old.connect() as conn:
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(f"UPDATE {table_name} SET at = '0000-00-00 00:00:00' WHERE id = 0")
        conn.commit()
    create(pg_new, table_name, "int", [])
    mapping = mapping_for(my_old, pg_new, table_name)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the driver's DataError subclass varies
        copy_chunk("mysql-text", my_old, pg_new, mapping, None, None, insert_only=False)
    assert str(getattr(caught.value, "sqlstate", "")).startswith("22"), caught.value
    assert read(pg_new, table_name, "int") == []


def typed_select(conn: Any) -> tuple[Any, ...]:
    cur = conn.cursor()
    cur.execute("SELECT 7, 'zoë', CAST(1.5 AS DECIMAL(4,2)), CAST('2024-01-02' AS DATE)")
    row = tuple(cur.fetchone())
    cur.close()
    return row


def test_the_mariadb_connection_is_left_as_found_also_when_the_read_fails(my_old: Store, pg_new: Store,
                                                                          table_name: str) -> None:
    """The text path reads raw bytes; the pooled connection must convert values again afterwards, or the
    next user of it (a mirror, a verification) would get bytes for numbers and dates."""
    expected = (7, "zoë", Decimal("1.50"), dt.date(2024, 1, 2))
    create(my_old, table_name, "int", source_rows("int"))
    create(pg_new, table_name, "int", [])
    mapping = mapping_for(my_old, pg_new, table_name)
    src = source_side(mapping, my_old)
    with my_old.connect() as conn:
        chunk = fastpath.mysql_read_text_chunk(conn, mapping, src, None, None, {})
        assert chunk.rows == len(KEYS["int"])
        assert typed_select(conn) == expected
        cur = conn.cursor()
        cur.execute(f"DROP TABLE {table_name}")  # the table goes away under the copy
        with pytest.raises(Exception, match=r"(?i)doesn't exist|1146"):
            fastpath.mysql_read_text_chunk(conn, mapping, src, None, None, {})
        assert typed_select(conn) == expected
        conn.rollback()
