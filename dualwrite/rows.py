"""Moving row images between stores: read mapped rows from a source, write them guarded into a target.

This is the engine-neutral path of the SQL store kind (any SQL source, any SQL target, Python transforms
allowed). The pass-throughs into PostgreSQL that never materialise rows in Python are the SQL kind's fast
backfill routes (:mod:`dualwrite.stores.sql`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite import sqlgen
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.sqlgen import Key, Side
from dualwrite.store import Dialect, Kind

Row = tuple[Any, ...]

#: executemany below this many rows; COPY into a staging table above it (PostgreSQL)
PG_COPY_THRESHOLD = 64


def _cursor(conn: Any) -> Any:
    return conn.cursor()


def fetch(conn: Any, sql: str, params: Sequence[Any]) -> list[Row]:
    cur = _cursor(conn)
    cur.execute(sql, tuple(params))
    rows = cur.fetchall()
    cur.close()
    return [tuple(r) for r in rows]


def _constant(value: Any) -> Callable[[Row], Any]:
    return lambda _row: value


def _of_column(fn: Callable[[Any], Any], pos: int) -> Callable[[Row], Any]:
    return lambda row: fn(row[pos])


def _of_row(fn: Callable[[Any], Any], names: list[str], width: int) -> Callable[[Row], Any]:
    """Whole-row transforms see every source column by name (appended after the target columns)."""
    return lambda row: fn(dict(zip(names, row[width:], strict=True)))


def finish_rows(mapping: TableMapping, raw: list[Row]) -> list[Row]:
    """Fill DEFAULT and TRANSFORM columns in Python; drop the trailing whole-row columns."""
    fillers: list[tuple[int, Callable[[Row], Any]]] = []
    width = len(mapping.columns)
    names = list(mapping.source_info.columns)
    for i, plan in enumerate(mapping.columns):
        if plan.kind is SourceKind.DEFAULT:
            fillers.append((i, _constant(plan.value)))
        elif plan.kind is SourceKind.TRANSFORM:
            assert plan.transform is not None
            if plan.source is not None:
                fillers.append((i, _of_column(plan.transform, width + names.index(plan.source))))
            else:
                fillers.append((i, _of_row(plan.transform, names, width)))
    if not fillers:
        return raw
    out = []
    for r in raw:
        row = list(r[:width])
        for i, fill in fillers:
            row[i] = fill(r)
        out.append(tuple(row))
    return out


def read_range(conn: Any, mapping: TableMapping, src: Side, lo: Key | None, hi: Key | None,
               *, lock: bool = False) -> list[Row]:
    sql, params = sqlgen.select_range_sql(mapping, src, lo, hi, lock=lock)
    return finish_rows(mapping, fetch(conn, sql, params))


def read_keys(conn: Any, mapping: TableMapping, src: Side, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
    if not keys:
        return []
    sql, params = sqlgen.select_keys_sql(mapping, src, keys, lock=lock)
    return finish_rows(mapping, fetch(conn, sql, params))


# ---------------------------------------------------------------------------------------------------------
# value adaptation for the target driver


def _to_naive_utc(v: Any) -> Any:
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v.astimezone(dt.UTC).replace(tzinfo=None)
    return v


def _json_text(v: Any) -> Any:
    if v is None or isinstance(v, str | bytes):
        return v
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def _uuid_text(v: Any) -> Any:
    return str(v) if isinstance(v, uuid.UUID) else v


def _pg_json(v: Any) -> Any:
    from psycopg.types.json import Jsonb  # noqa: PLC0415

    if v is None:
        return None
    if isinstance(v, str | bytes):
        return Jsonb(json.loads(v))
    return Jsonb(v)


def _pg_uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


def _pg_bool(v: Any) -> Any:
    return bool(v) if isinstance(v, int) else v


def _pg_ts(v: Any) -> Any:
    if isinstance(v, dt.datetime) and v.tzinfo is None:
        return v.replace(tzinfo=dt.UTC)
    return v


def adapters_for(mapping: TableMapping, dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    out: list[Callable[[Any], Any] | None] = []
    for kind in mapping.target_kinds():
        fn: Callable[[Any], Any] | None = None
        if dialect is Dialect.POSTGRESQL:
            # a uuid read from one store into a text column of the other (CHAR(36) <-> uuid): psycopg would
            # send it in its own text form, 32 hex digits without dashes, a different key in a CHAR(36)
            fn = {Kind.JSON: _pg_json, Kind.UUID: _pg_uuid, Kind.BOOL: _pg_bool,
                  Kind.TIMESTAMPTZ: _pg_ts, Kind.TEXT: _uuid_text}.get(kind)
        else:
            fn = {Kind.JSON: _json_text, Kind.UUID: _uuid_text, Kind.TIMESTAMP: _to_naive_utc,
                  Kind.TIMESTAMPTZ: _to_naive_utc}.get(kind)
            if dialect is Dialect.SQLITE and kind is Kind.DECIMAL:
                fn = _sqlite_decimal  # sqlite3 binds no Decimal (one read from PostgreSQL or Redis)
        out.append(fn)
    return out


def _sqlite_decimal(value: Any) -> Any:
    """A ``Decimal`` as SQLite stores a NUMERIC value it is given (a float); other values unchanged."""
    return float(value) if isinstance(value, decimal.Decimal) else value


def adapt(rows: list[Row], adapters: list[Callable[[Any], Any] | None]) -> list[Row]:
    active = [(i, f) for i, f in enumerate(adapters) if f is not None]
    if not active:
        return rows
    out = []
    for r in rows:
        row = list(r)
        for i, f in active:
            if row[i] is not None:
                row[i] = f(row[i])
        out.append(tuple(row))
    return out


def adapt_key(key: Key, kinds: Sequence[Kind], dialect: Dialect) -> Key:
    if dialect is Dialect.POSTGRESQL:
        return tuple(_pg_uuid(v) if k is Kind.UUID else _uuid_text(v) for v, k in zip(key, kinds, strict=True))
    return tuple(_uuid_text(v) for v in key)


# ---------------------------------------------------------------------------------------------------------
# writing


def write_rows(conn: Any, mapping: TableMapping, dst: Side, rows: list[Row], *, insert_only: bool,
               only_if_newer: bool) -> None:
    """Upsert ``rows`` (target column order) into the target, guarded; the caller commits."""
    if not rows:
        return
    rows = adapt(rows, adapters_for(mapping, dst.store.dialect))
    if dst.store.dialect is Dialect.POSTGRESQL and len(rows) >= PG_COPY_THRESHOLD:
        _pg_write_via_staging(conn, mapping, dst, rows, insert_only=insert_only, only_if_newer=only_if_newer)
        return
    sql = sqlgen.upsert_sql(mapping, dst, only_if_newer=only_if_newer, insert_only=insert_only)
    cur = _cursor(conn)
    cur.executemany(sql, rows)
    cur.close()


def pg_copy_rows(conn: Any, mapping: TableMapping, dst: Side, rows: list[Row]) -> int:
    """COPY ``rows`` straight into the target table (no conflict handling: a duplicate key raises).

    The optimistic first attempt of a backfill chunk: most chunks meet no live write, and a plain COPY
    is several times cheaper than staging plus a merge. The caller rolls back and stages on conflict.
    """
    rows = adapt(rows, adapters_for(mapping, dst.store.dialect))
    collist = ", ".join(dst.store.quote(c) for c in mapping.target_columns)
    cur = conn.cursor()
    with cur.copy(f"COPY {dst.qtable} ({collist}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    cur.close()
    return len(rows)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def pg_copy_text(value: Any) -> str | None:
    """``value`` spelled as a PostgreSQL COPY text field (None stays None: the caller writes ``\\N``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "t" if value else "f"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bytes | bytearray | memoryview):
        text = "\\x" + bytes(value).hex()
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return text.translate(_COPY_ESCAPES)


def pg_staging_table(conn: Any, mapping: TableMapping, dst: Side) -> str:
    """A session-local staging table shaped like the target's mapped columns, emptied on commit.

    Pooled sessions outlive a mapping: the name carries a digest of the column list, so a session that
    staged for an older shape of the table never reuses that staging table.
    """
    cols = ", ".join(f"{dst.store.quote(c)} {mapping.target_info.columns[c].sql_type}"
                     for c in mapping.target_columns)
    digest = hashlib.blake2s(cols.encode(), digest_size=4).hexdigest()
    name = f"_dw_stage_{''.join(ch if ch.isalnum() else '_' for ch in mapping.target_table)[:40]}_{digest}"
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({cols}) ON COMMIT DELETE ROWS")
    return name


def _pg_write_via_staging(conn: Any, mapping: TableMapping, dst: Side, rows: list[Row], *, insert_only: bool,
                          only_if_newer: bool) -> None:
    staging = pg_staging_table(conn, mapping, dst)
    collist = ", ".join(dst.store.quote(c) for c in mapping.target_columns)
    cur = conn.cursor()
    with cur.copy(f"COPY {staging} ({collist}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    cur.execute(sqlgen.pg_merge_from_staging_sql(mapping, dst, staging, only_if_newer=only_if_newer,
                                                 insert_only=insert_only))
    cur.close()


def delete_keys(conn: Any, dst: Side, keys: Sequence[Key]) -> int:
    if not keys:
        return 0
    keys = [adapt_key(k, dst.key_kinds, dst.store.dialect) for k in keys]
    sql, params = sqlgen.delete_keys_sql(dst, keys)
    cur = _cursor(conn)
    cur.execute(sql, tuple(params))
    n = cur.rowcount
    cur.close()
    return int(n or 0)


def key_of(row: Row, positions: Sequence[int]) -> Key:
    return tuple(row[p] for p in positions)
