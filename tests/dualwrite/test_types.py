"""Every common column type survives a copy exactly, on every route and engine pair.

The same logical rows are written into a PostgreSQL, MariaDB or SQLite source with that engine's native
types, copied, and read back from the target through its driver; the values must equal the expected
values exactly (a Decimal is a Decimal with the same digits, a timestamp the same instant, JSON the same
document). The rows include the values that break naive pipelines: tabs, newlines, backslashes, the
literal strings ``\\N`` and ``NULL``, emoji, NUL and backslash bytes, extreme integers and floats, NULLs.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest

from dualwrite.backfill_copy import copy_range
from dualwrite.mapping import identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.store import Store

UTC = dt.UTC
COLS = ["id", "c_int", "c_bigint", "c_num", "c_float", "c_bool", "c_varchar", "c_text", "c_bytes", "c_date",
        "c_ts", "c_tstz", "c_json", "c_uuid"]

ROWS: list[tuple[Any, ...]] = [
    (1, 42, 9007199254740993, Decimal("-12345678.1234"), 0.1, True, "héllo wörld",
     "tab\there\nnewline\r\ncrlf back\\slash \"dq\" 'sq'", b"\x00\x01\\\t\n\xff",
     dt.date(2024, 2, 29), dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
     dt.datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
     {"a": [1, 2.5, "x\ty"], "emoji": "😀", "nested": {"k": None}, "bs": "\\"},
     uuid.UUID("0b9e8f1a-3c52-4d8e-9a41-6f1e2d3c4b5a")),
    (2, 0, -9223372036854775808, Decimal("0.0001"), -1.7976931348623157e308, False, "", "\\N", b"",
     dt.date(1970, 1, 1), dt.datetime(1999, 12, 31, 23, 59, 59),
     dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC), [], uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")),
    (3, -2147483648, 9223372036854775807, Decimal("99999999.9999"), 1e-300, True, "😀🎉 日本語 ñ",
     "NULL", bytes(range(256)), dt.date(2038, 1, 19), dt.datetime(2038, 1, 19, 3, 14, 7, 1),
     dt.datetime(2037, 12, 31, 0, 0, 0, 1, tzinfo=UTC), {"s": "tab\t nl\n quote\" 日本"},
     uuid.UUID("00000000-0000-4000-8000-000000000000")),
    (4, None, None, None, None, None, None, None, None, None, None, None, None, None),
]

PG_DDL = """CREATE TABLE {t} (id int PRIMARY KEY, c_int int, c_bigint bigint, c_num numeric(12,4),
  c_float double precision, c_bool boolean, c_varchar varchar(50), c_text text, c_bytes bytea, c_date date,
  c_ts timestamp(6), c_tstz timestamptz(6), c_json jsonb, c_uuid uuid)"""
MY_DDL = """CREATE TABLE {t} (id INT PRIMARY KEY, c_int INT, c_bigint BIGINT, c_num DECIMAL(12,4),
  c_float DOUBLE, c_bool BOOLEAN, c_varchar VARCHAR(50), c_text TEXT, c_bytes BLOB, c_date DATE,
  c_ts DATETIME(6), c_tstz TIMESTAMP(6) NULL, c_json JSON, c_uuid UUID) DEFAULT CHARSET=utf8mb4"""
SQLITE_DDL = """CREATE TABLE {t} (id INTEGER PRIMARY KEY, c_int INTEGER, c_bigint BIGINT, c_num NUMERIC(12,4),
  c_float DOUBLE, c_bool BOOLEAN, c_varchar VARCHAR(50), c_text TEXT, c_bytes BLOB, c_date DATE,
  c_ts TIMESTAMP, c_tstz TIMESTAMP, c_json JSON, c_uuid UUID)"""
DDL = {"postgresql": PG_DDL, "mysql": MY_DDL, "sqlite": SQLITE_DDL}


def _naive_utc(v: dt.datetime) -> dt.datetime:
    return v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v


def source_value(dialect: str, col: str, v: Any) -> Any:
    """How a logical value is handed to each engine's driver."""
    if v is None or dialect == "postgresql":
        if dialect == "postgresql" and col == "c_json" and v is not None:
            from psycopg.types.json import Jsonb

            return Jsonb(v)
        return v
    if col == "c_json":
        return json.dumps(v, ensure_ascii=False)
    if col == "c_uuid":
        return str(v)
    if isinstance(v, dt.datetime):
        v = _naive_utc(v)
        return v.isoformat(sep=" ") if dialect == "sqlite" else v
    if dialect == "sqlite" and isinstance(v, dt.date | Decimal):
        return str(v)
    return v


def insert(store: Store, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]],
           convert: Callable[[str, str, Any], Any] | None = None) -> None:
    conv = convert or (lambda _d, _c, v: v)
    ph = ", ".join([store.paramstyle] * len(cols))
    sql = f"INSERT INTO {store.quote(table)} ({', '.join(store.quote(c) for c in cols)}) VALUES ({ph})"
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(sql, [tuple(conv(store.dialect.value, c, v) for c, v in zip(cols, r, strict=True))
                              for r in rows])
        cur.close()
        conn.commit()


def read_rows(store: Store, table: str, cols: Sequence[str] = COLS) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(store.quote(c) for c in cols)} FROM {store.quote(table)} ORDER BY 1")
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return rows


def expected_pg(rows: Sequence[tuple[Any, ...]] = ROWS) -> list[tuple[Any, ...]]:
    """What psycopg returns from the PostgreSQL target: exactly the logical values."""
    return [tuple(r) for r in rows]


def make_source(store: Store, table: str, run_sql: Callable[..., None]) -> None:
    run_sql(store, DDL[store.dialect.value].format(t=store.quote(table)))
    insert(store, table, COLS, ROWS, source_value)


@pytest.mark.parametrize("source_name", ["pg_old", "my_old", "sqlite_old"])
@pytest.mark.parametrize("route", [None, "generic"])
def test_every_type_copies_exactly_into_postgresql(
    request: pytest.FixtureRequest, source_name: str, route: str | None, pg_new: Store, table_name: str,
    run_sql: Callable[..., None],
) -> None:
    source: Store = request.getfixturevalue(source_name)
    make_source(source, table_name, run_sql)
    run_sql(pg_new, PG_DDL.format(t=table_name))
    mapping = identity_mapping(source.describe(table_name), pg_new.describe(table_name), batch_size=3)
    prog = copy_range(source, pg_new, mapping, route=route)
    expected_route = {"pg_old": "pg-binary", "my_old": "mysql-text", "sqlite_old": "generic"}[source_name]
    assert prog.extra["route"] == (route or expected_route)
    assert "fallback_chunks" not in prog.extra  # the text route read every value itself
    assert prog.done and prog.rows == len(ROWS) and prog.batches == 2
    assert read_rows(pg_new, table_name) == expected_pg()


@pytest.mark.parametrize("source_name", ["pg_old", "my_old", "sqlite_old"])
def test_every_type_mirrors_exactly_into_postgresql(
    request: pytest.FixtureRequest, source_name: str, pg_new: Store, table_name: str,
    run_sql: Callable[..., None],
) -> None:
    source: Store = request.getfixturevalue(source_name)
    make_source(source, table_name, run_sql)
    run_sql(pg_new, PG_DDL.format(t=table_name))
    mapping = identity_mapping(source.describe(table_name), pg_new.describe(table_name))
    result = mirror_keys(source, pg_new, mapping, [(r[0],) for r in ROWS])
    assert (result.keys, result.upserted, result.deleted) == (4, 4, 0)
    assert read_rows(pg_new, table_name) == expected_pg()


def expected_mariadb(rows: Sequence[tuple[Any, ...]] = ROWS) -> list[tuple[Any, ...]]:
    """What mysqlclient returns from the MariaDB target: JSON as text, booleans as 0/1, naive UTC."""
    out = []
    for r in rows:
        row = list(r)
        row[5] = None if r[5] is None else int(r[5])
        row[11] = None if r[11] is None else _naive_utc(r[11])
        row[13] = None if r[13] is None else str(r[13])
        out.append(tuple(row))
    return out


@pytest.mark.parametrize("via", ["copy", "mirror"])
def test_every_type_copies_exactly_postgresql_to_mariadb(
    via: str, pg_old: Store, my_new: Store, table_name: str, run_sql: Callable[..., None],
) -> None:
    make_source(pg_old, table_name, run_sql)
    run_sql(my_new, MY_DDL.format(t=table_name))
    mapping = identity_mapping(pg_old.describe(table_name), my_new.describe(table_name), batch_size=3)
    if via == "copy":
        prog = copy_range(pg_old, my_new, mapping)
        assert prog.extra["route"] == "generic" and prog.rows == len(ROWS)
    else:
        mirror_keys(pg_old, my_new, mapping, [(r[0],) for r in ROWS])
    got = read_rows(my_new, table_name)
    got = [(*r[:12], None if r[12] is None else json.loads(r[12]), r[13]) for r in got]
    assert got == expected_mariadb()


def test_mariadb_values_postgresql_cannot_read_fall_back_per_chunk(
    my_old: Store, pg_new: Store, table_name: str, run_sql: Callable[..., None],
) -> None:
    """A zero date is legal in a lax MariaDB and unreadable by PostgreSQL: only its chunk takes the row
    path (where the driver reads it as NULL); the other chunks stay on the text route."""
    run_sql(my_old, f"CREATE TABLE {table_name} (id INT PRIMARY KEY, d DATE NULL, s TEXT)",
            "SET SESSION sql_mode = ''",
            f"INSERT INTO {table_name} VALUES (1, '2024-01-01', 'a'), (2, '0000-00-00', 'b\\tc'), "
            "(3, '2024-01-03', 'c'), (4, '2024-01-04', 'd')")
    run_sql(pg_new, f"CREATE TABLE {table_name} (id int PRIMARY KEY, d date, s text)")
    mapping = identity_mapping(my_old.describe(table_name), pg_new.describe(table_name), batch_size=2)
    prog = copy_range(my_old, pg_new, mapping)
    assert prog.extra["route"] == "mysql-text" and prog.extra["fallback_chunks"] == 1
    assert read_rows(pg_new, table_name, ["id", "d", "s"]) == [
        (1, dt.date(2024, 1, 1), "a"), (2, None, "b\tc"), (3, dt.date(2024, 1, 3), "c"),
        (4, dt.date(2024, 1, 4), "d")]


def test_a_rejected_row_fails_without_showing_its_values(
    sqlite_old: Store, pg_new: Store, table_name: str, run_sql: Callable[..., None],
) -> None:
    """Errors reach logs and Temporal history: the driver's message quoting the row must not."""
    from dualwrite.errors import StoreError

    run_sql(sqlite_old, f"CREATE TABLE {table_name} (id INTEGER PRIMARY KEY, n INTEGER)",
            f"INSERT INTO {table_name} VALUES (1, 5), (2, 'secret-value')")  # SQLite keeps the text
    run_sql(pg_new, f"CREATE TABLE {table_name} (id int PRIMARY KEY, n int)")
    mapping = identity_mapping(sqlite_old.describe(table_name), pg_new.describe(table_name))
    with pytest.raises(StoreError) as copy_err:
        copy_range(sqlite_old, pg_new, mapping)
    with pytest.raises(StoreError) as mirror_err:
        mirror_keys(sqlite_old, pg_new, mapping, [(2,)])
    for err in (copy_err, mirror_err):
        assert "rejected a row" in str(err.value) and "22P02" in str(err.value)
        assert "secret" not in str(err.value) and err.value.__cause__ is None
