"""Dialect fast paths that move one backfill chunk into PostgreSQL without building Python row objects.

Both paths are *optimistic*: they COPY straight into the target table, which is several times cheaper
than staging and merging, and which only fails when some key of the chunk is already there (a live
mirror got there first, or the chunk is being redone after a crash). On that unique violation the chunk
is rolled back and written again through a staging table and one version-guarded
``INSERT ... ON CONFLICT``, so live writes still win (rule 4, docs/architecture.md).

- PostgreSQL -> PostgreSQL: the source renders the chunk as binary COPY with every column cast to the
  target's type; the bytes go straight into the target's COPY.
- MariaDB -> PostgreSQL: MariaDB renders every value as COPY text (see
  :func:`dualwrite.sqlgen.mysql_copy_text_select`), the driver hands back raw bytes (no conversions),
  and Python only joins fields into lines: C-level joins, no per-value Python work on the common path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dualwrite import rows as rowio
from dualwrite import sqlgen
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.sqlgen import Key, Side
from dualwrite.store import is_unique_violation

#: rows fetched from MariaDB per round of formatting: bounds the raw Python tuples alive at once
MYSQL_FETCH_ROWS = 10_000
_NULL = b"\\N"


def _collist(mapping: TableMapping, dst: Side) -> str:
    return ", ".join(dst.store.quote(c) for c in mapping.target_columns)


#: bytes gathered from the source before one write to the target; the source sends one message per row
RELAY_BYTES = 256 * 1024


def _relay(cin: Any, cout: Any) -> None:
    """Move a binary COPY stream between connections in large writes (psycopg writes bytes unbuffered)."""
    buf = bytearray()
    for data in cin:
        buf += data
        if len(buf) >= RELAY_BYTES:
            cout.write(buf)
            buf = bytearray()
    if buf:
        cout.write(buf)


def _merge(tcur: Any, mapping: TableMapping, dst: Side, staging: str, insert_only: bool) -> None:
    tcur.execute(sqlgen.pg_merge_from_staging_sql(mapping, dst, staging, only_if_newer=True,
                                                  insert_only=insert_only))


# -- PostgreSQL -> PostgreSQL -----------------------------------------------------------------------------


def pg_binary_chunk(sconn: Any, tconn: Any, mapping: TableMapping, src: Side, dst: Side,
                    lo: Key | None, hi: Key | None, *, insert_only: bool) -> tuple[int, bool]:
    """Stream one chunk as binary COPY from source to target; returns (rows, had_conflict).

    The caller commits (or rolls back) both connections.
    """
    sql, params = sqlgen.select_range_sql(mapping, src, lo, hi, cast_to_target=True)
    out_sql = f"COPY ({sql}) TO STDOUT (FORMAT binary)"
    collist = _collist(mapping, dst)
    tcur = tconn.cursor()
    try:
        with sconn.cursor().copy(out_sql, params) as cin, \
                tcur.copy(f"COPY {dst.qtable} ({collist}) FROM STDIN (FORMAT binary)") as cout:
            _relay(cin, cout)
        return int(tcur.rowcount), False
    except Exception as exc:
        if not is_unique_violation(exc):
            raise
    # Some keys of this chunk already exist: stream the chunk again into staging and merge guarded.
    tconn.rollback()
    sconn.rollback()
    staging = rowio.pg_staging_table(tconn, mapping, dst)
    with sconn.cursor().copy(out_sql, params) as cin, \
            tcur.copy(f"COPY {staging} ({collist}) FROM STDIN (FORMAT binary)") as cout:
        _relay(cin, cout)
    n = int(tcur.rowcount)
    _merge(tcur, mapping, dst, staging, insert_only)
    return n, True


# -- MariaDB -> PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class TextChunk:
    """One chunk rendered as PostgreSQL COPY text, kept whole so a conflict can replay it into staging."""

    blocks: list[bytes] = field(default_factory=list)
    rows: int = 0

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blocks)


def mysql_text_defaults(mapping: TableMapping) -> dict[int, str]:
    """DEFAULT columns rendered once as COPY text, by position (NULL defaults are left out)."""
    out: dict[int, str] = {}
    for i, plan in enumerate(mapping.columns):
        if plan.kind is SourceKind.DEFAULT:
            text = rowio.pg_copy_text(plan.value)
            if text is not None:
                out[i] = text
    return out


def mysql_text_supported(mapping: TableMapping) -> bool:
    """The text path needs every value computable on MariaDB: no Python transforms."""
    return not mapping.needs_python


@contextlib.contextmanager
def _raw_values(conn: Any) -> Iterator[None]:
    """Make the driver hand back every value as the server sent it, unparsed: bytes from mysqlclient
    (``conn.converter``), text from PyMySQL (``conn.decoders``; it decodes by the column's charset first)."""
    attr = "converter" if isinstance(getattr(conn, "converter", None), dict) else "decoders"
    saved = getattr(conn, attr)
    setattr(conn, attr, {})
    try:
        yield
    finally:
        setattr(conn, attr, saved)


def _as_bytes(rows: Any) -> list[tuple[Any, ...]]:
    """PyMySQL's rows as mysqlclient's raw ones: every text value back to the UTF-8 bytes sent."""
    return [tuple(v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for v in r) for r in rows]


def _ss_cursor_class(conn: Any) -> Any:
    """The driver's unbuffered (streaming) cursor."""
    if type(conn).__module__.startswith("pymysql"):
        from pymysql.cursors import SSCursor as PySSCursor  # noqa: PLC0415 - the default driver

        return PySSCursor
    from MySQLdb.cursors import SSCursor  # noqa: PLC0415 - optional driver

    return SSCursor


def _lines(rows: Any, null_safe: bool) -> bytes:
    if not rows:
        return b""
    if null_safe:
        with contextlib.suppress(TypeError):  # a NULL slipped through after all: take the careful path
            return b"\n".join(map(b"\t".join, rows)) + b"\n"
    return b"\n".join([b"\t".join([_NULL if v is None else v for v in r]) for r in rows]) + b"\n"


def mysql_read_text_chunk(conn: Any, mapping: TableMapping, src: Side, lo: Key | None, hi: Key | None,
                          defaults: dict[int, str]) -> TextChunk:
    """Read ``lo < key <= hi`` from MariaDB as COPY text blocks (the caller ends the transaction)."""
    sql, params, null_safe = sqlgen.mysql_copy_text_select(mapping, src, lo, hi, defaults)
    chunk = TextChunk()
    text_rows = type(conn).__module__.startswith("pymysql")
    with _raw_values(conn):
        cur = conn.cursor(_ss_cursor_class(conn))  # streams: only MYSQL_FETCH_ROWS raw rows exist at a time
        try:
            cur.execute(sql, tuple(params))
            while True:
                rows = cur.fetchmany(MYSQL_FETCH_ROWS)
                if not rows:
                    break
                chunk.blocks.append(_lines(_as_bytes(rows) if text_rows else rows, null_safe))
                chunk.rows += len(rows)
        finally:
            cur.close()
    return chunk


def pg_write_text_chunk(tconn: Any, mapping: TableMapping, dst: Side, chunk: TextChunk, *,
                        insert_only: bool) -> tuple[int, bool]:
    """COPY a text chunk into the target, or into staging + guarded merge on conflict; (rows, conflict).

    The caller commits. Data errors (a value PostgreSQL cannot read) propagate: the caller falls back to
    the generic row path for that chunk.
    """
    collist = _collist(mapping, dst)
    tcur = tconn.cursor()
    try:
        with tcur.copy(f"COPY {dst.qtable} ({collist}) FROM STDIN") as cout:
            for block in chunk.blocks:
                cout.write(block)
        return chunk.rows, False
    except Exception as exc:
        if not is_unique_violation(exc):
            raise
    tconn.rollback()
    staging = rowio.pg_staging_table(tconn, mapping, dst)
    with tcur.copy(f"COPY {staging} ({collist}) FROM STDIN") as cout:
        for block in chunk.blocks:
            cout.write(block)
    _merge(tcur, mapping, dst, staging, insert_only)
    return chunk.rows, True
