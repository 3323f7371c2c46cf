"""One table in Redis as the TARGET side of a mapping: one key per row, pipelined, guarded by a script.

Writes go through one Lua script per key so that each is atomic on the server: the check (is the key
there; is its version older) and the write (``DEL`` + ``HSET`` so fields of columns now NULL disappear,
or ``SET`` of the JSON document) happen with no other client in between. A batch of keys is one round
trip, its commands packed by :mod:`._resp` (redis-py's per-argument packing cost a backfill more than the
server's work), each row's fields encoded by the column encoders chosen once per table.

Redis cannot read keys in order between two bounds, so the kind says ``range_reads=False``: copy and
verification walk the *source's* key ranges and fetch the matching keys here (:meth:`canonical_keys`).
The range methods still work, by ``SCAN`` over the template's keys, parsing each back into key values
(:meth:`range_keys`): verification uses that once per run to find keys the source lacks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from dualwrite.canonical import canonical_value
from dualwrite.errors import RowRejectedError
from dualwrite.keyvalue.intact import MARKER_PREFIX
from dualwrite.keyvalue.strict_notes import StrictOp
from dualwrite.mapping import TableMapping
from dualwrite.store import Kind
from dualwrite.stores._kind import Key, Role, Row, normal_key
from dualwrite.stores.redis import _resp
from dualwrite.stores.redis._layout import RedisLayout

__all__ = ["RedisTable"]

#: keys per pipeline (one round trip), and per SCAN step
PIPELINE = 1_000
SCAN_COUNT = 1_000

def _row_script(*, noted: bool) -> str:
    """The row write's script; ``noted``: its outbox entry is appended first (KEYS[2] the stream, ARGV[5] the
    spec table, ARGV[6] the key JSON, the value from ARGV[7]), and only when the row is written."""
    v = 7 if noted else 5
    note = "redis.call('XADD', KEYS[2], '*', 'table', ARGV[5], 'key', ARGV[6])\n" if noted else ""
    return f"""
local key = KEYS[1]
local mode, vfield, vnew, shape = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local existed = redis.call('EXISTS', key) == 1
if existed then
  if mode == 'insert' then return 0 end
  if mode == 'newer' then
    local cur = false
    if shape == 'hash' then
      cur = redis.call('HGET', key, vfield)
    else
      local ok, doc = pcall(cjson.decode, redis.call('GET', key))
      if ok and type(doc) == 'table' and type(doc[vfield]) == 'string' then cur = doc[vfield] end
    end
    if cur then
      local a, b = tonumber(cur), tonumber(vnew)
      if a and b then
        if a >= b then return 0 end
      elseif cur >= vnew then
        return 0
      end
    end
  end
end
{note}if shape == 'hash' then
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, {v}))
else
  redis.call('SET', key, ARGV[{v}])
end
if existed then return 2 end
return 1
"""


#: ARGV: mode (insert | newer | always), version field, incoming version text, shape (hash | json), then
#: the JSON document or the hash's field/value pairs. Returns 1 written (new key), 2 overwritten, 0 left.
WRITE_ROW = _row_script(noted=False)
NOTED_WRITE_ROW = _row_script(noted=True)
"""The adapter's write while Redis is authoritative under ``outbox``: the row and its stream entry in one
script (:mod:`dualwrite.keyvalue.stream_outbox`)."""
WRITE_ROW_SHA = hashlib.sha1(WRITE_ROW.encode()).hexdigest()  # Redis names a script by its SHA-1


#: the type of a decoded key value of each kind (text for the rest): a value of another type is text that
#: did not parse, so the key is no row's key (and could not be ordered among the others)
_KEY_TYPES: dict[Kind, type | tuple[type, ...]] = {
    Kind.INT: int, Kind.BOOL: bool, Kind.DECIMAL: decimal.Decimal, Kind.FLOAT: float, Kind.BYTES: bytes,
    Kind.DATE: dt.date, Kind.TIME: dt.time, Kind.TIMESTAMP: dt.datetime, Kind.TIMESTAMPTZ: dt.datetime,
}


def _key_value(value: Any, kind: Kind) -> Any:
    """A key value decoded from Redis in the form :func:`normal_key` gives SQL keys (naive UTC datetimes)."""
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ) and isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.replace(" ", "T", 1))
        return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return value


def _inside(key: Key, lo: Key | None, hi: Key | None) -> bool:
    return (lo is None or key > tuple(lo)) and (hi is None or key <= tuple(hi))


class RedisTable:
    """A :class:`~dualwrite.stores.MappedTable` over one table's keys in one Redis database."""

    def __init__(self, layout: RedisLayout, mapping: TableMapping, role: Role) -> None:
        self.role = role
        self.layout = layout
        self.names = mapping.target_columns
        self.positions = mapping.key_positions
        self.key_kinds = tuple(mapping.target_info.columns[c].kind for c in mapping.target_key)
        vpos = mapping.version_position
        self.version = None if vpos is None else (vpos, self.names[vpos], layout.codec.encoders[vpos])
        self._key_of = layout.template.keyer(tuple(layout.key_columns))
        self.timestamp_keys = any(k in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ) for k in self.key_kinds)

    # -- keys ----------------------------------------------------------------------------------------------

    def redis_key(self, key: Key) -> str:
        """The Redis key of a row's key values (in the mapping's key order)."""
        return self.layout.template.key(key, self.layout.key_columns)

    def _row_redis_key(self, row: Row) -> str:
        return self._key_of([row[p] for p in self.positions])

    def row_key(self, row: Row) -> Key:
        return normal_key(tuple(row[p] for p in self.positions))

    def scan_keys(self, conn: Any) -> Iterator[Key]:
        """Every key under the table's template, as normal key values (other keys are skipped)."""
        template = self.layout.template
        for raw in conn.client.scan_iter(match=template.scan_pattern(), count=SCAN_COUNT):
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            if name.startswith(MARKER_PREFIX):
                continue  # dualwrite's own keys (keyvalue.intact), never a row
            try:
                values = template.values(name, self.layout.key_columns)
                if values is None or template.key(values, self.layout.key_columns) != name:
                    continue
                key = tuple(_key_value(v, k) for v, k in zip(values, self.key_kinds, strict=True))
            except (ValueError, TypeError, ArithmeticError, RowRejectedError):
                continue
            if all(isinstance(v, _KEY_TYPES.get(k, str)) for v, k in zip(key, self.key_kinds, strict=True)):
                yield normal_key(key)  # else e.g. "customer:abc" under an integer key: no row has that key

    # -- reading -------------------------------------------------------------------------------------------

    def _decode(self, raw: Any, key: Key) -> Row | None:
        """The canonical row of a key's value; None when the key is absent. A value that is not one of
        ours (another type of key, a document that is no JSON object) reads as a row of NULLs under its
        key: it differs from the source row in every column, and the mirror rewrites it."""
        if not raw:
            return None
        if isinstance(raw, Exception):  # WRONGTYPE: a string where a hash belongs, or the other way round
            raw = {}
        elif self.layout.json:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                doc = {}
            raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
        row = list(self.layout.codec.canonical_row(raw))
        for p, kind, value in zip(self.positions, self.key_kinds, key, strict=True):
            if row[p] is None:  # the key field is gone: the Redis key still says whose row it is
                row[p] = canonical_value(value, kind)
        return tuple(row)

    def _normal(self, canon: Row) -> Row:
        """A canonical row with its key values in normal form (what :meth:`row_key` and repair use)."""
        if not self.timestamp_keys:
            return canon
        row = list(canon)
        for p, kind in zip(self.positions, self.key_kinds, strict=True):
            row[p] = _key_value(row[p], kind)
        return tuple(row)

    def _fetch(self, conn: Any, keys: Sequence[Key]) -> list[tuple[Row, Row]]:
        """(row with normal key values, canonical row) of each key present, in the order asked."""
        out: list[tuple[Row, Row]] = []
        for start in range(0, len(keys), PIPELINE):
            batch = keys[start:start + PIPELINE]
            pipe = conn.client.pipeline(transaction=False)
            for k in batch:
                name = self.redis_key(k)
                if self.layout.json:
                    pipe.get(name)
                else:
                    pipe.hgetall(name)
            for k, raw in zip(batch, pipe.execute(raise_on_error=False), strict=True):
                canon = self._decode(raw, k)
                if canon is not None:
                    out.append((self._normal(canon), canon))
        return out

    def read_keys(self, conn: Any, keys: Sequence[Key], *, lock: bool = False) -> list[Row]:
        return [row for row, _ in self._fetch(conn, [normal_key(tuple(k)) for k in keys])]

    def canonical_keys(self, conn: Any, keys: Sequence[Key]) -> tuple[list[Row], list[Row]]:
        got = self._fetch(conn, [normal_key(tuple(k)) for k in keys])
        return [r for r, _ in got], [c for _, c in got]

    def stored_rows(self, conn: Any, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        return {self.row_key(row): dict(zip(self.names, row, strict=True)) for row in self.read_keys(conn, keys)}

    # -- writing -------------------------------------------------------------------------------------------

    def _write(self, conn: Any, rows: list[Row], mode: str) -> list[int]:
        results: list[int] = []
        for start in range(0, len(rows), PIPELINE):
            commands = [self._command(row, mode) for row in rows[start:start + PIPELINE]]
            replies = _resp.run(conn.client, commands)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                conn.client.script_load(WRITE_ROW)  # a new or flushed server: load, then run the batch again
                replies = _resp.run(conn.client, commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            results += [int(r) for r in replies]
        return results

    def _command(self, row: Row, mode: str) -> bytes:
        """The packed ``EVALSHA`` of one row's write (see :data:`WRITE_ROW` for the arguments)."""
        vnew = self._version_text(row)
        how = mode if mode != "newer" or vnew is not None else "always"
        head = ["EVALSHA", WRITE_ROW_SHA, "1", self._row_redis_key(row), how, self.version[1] if self.version else "",
                vnew or ""]
        if self.layout.json:
            return _resp.pack([*head, "json", json.dumps(self.layout.codec.fields(row), sort_keys=True,
                                                         ensure_ascii=False, separators=(",", ":"))])
        return _resp.pack([*head, "hash", *self.layout.codec.pairs(row)])

    def _version_text(self, row: Row) -> str | None:
        if self.version is None:
            return None
        pos, _name, encode = self.version
        value = row[pos]
        return None if value is None else encode(value)

    def put(self, conn: Any, rows: list[Row], *, insert_only: bool) -> list[bool]:
        """Write whole rows (the adapter's writes while Redis is authoritative); for each, whether it was
        written (False: ``insert_only`` found its key taken)."""
        return [r != 0 for r in self._write(conn, rows, "insert" if insert_only else "always")]

    def put_noted(self, conn: Any, row: Row, *, insert_only: bool, stream: str, table: str, key_json: str) -> bool:
        """One row written with its outbox entry appended to ``stream`` in the same script (both or
        neither); False: ``insert_only`` found the key taken (then no entry is appended either)."""
        args = ["insert" if insert_only else "always", self.version[1] if self.version else "",
                self._version_text(row) or "", "json" if self.layout.json else "hash", table, key_json]
        if self.layout.json:
            args.append(json.dumps(self.layout.codec.fields(row), sort_keys=True, ensure_ascii=False,
                                   separators=(",", ":")))
        else:
            args += self.layout.codec.pairs(row)
        script = conn.client.register_script(NOTED_WRITE_ROW)  # EVALSHA, loading the script when missing
        return int(script(keys=[self._row_redis_key(row), stream], args=args)) != 0

    def delete_noted(self, conn: Any, key: Key, *, stream: str, table: str, key_json: str) -> int:
        """Delete one key with its outbox entry appended in the same script (entry first: both or neither)."""
        from dualwrite.keyvalue.stream_outbox import NOTED_DELETE  # noqa: PLC0415 - only the adapter's path

        script = conn.client.register_script(NOTED_DELETE)
        return int(script(keys=[self.redis_key(normal_key(tuple(key))), stream], args=[table, key_json]))

    def strict_op(self, key: Key, row: Row | None, *, insert_only: bool = False) -> StrictOp:
        """One row of a strict write as the strict script's op (:mod:`dualwrite.keyvalue.strict_notes`):
        ``row`` None deletes ``key``; ``insert_only`` refuses the whole script when the key exists."""
        if row is None:
            return StrictOp(self.redis_key(normal_key(tuple(key))), "del", [], None)
        name = self._row_redis_key(row)
        if self.layout.json:
            doc = json.dumps(self.layout.codec.fields(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            return StrictOp(name, "jins" if insert_only else "json", [doc], doc)
        pairs = self.layout.codec.pairs(row)
        return StrictOp(name, "hins" if insert_only else "hash", pairs, pairs)

    def upsert(self, conn: Any, rows: list[Row], *, insert_only: bool, only_if_newer: bool) -> None:
        mode = "insert" if insert_only else "newer" if only_if_newer and self.version is not None else "always"
        self._write(conn, rows, mode)

    def insert_chunk(self, conn: Any, rows: list[Row], *, insert_only: bool) -> tuple[int, bool]:
        """Backfill: live writes win. A key present already is left alone unless the version column says the
        incoming row is newer (no version column: always left alone)."""
        mode = "newer" if not insert_only and self.version is not None else "insert"
        results = self._write(conn, rows, mode)
        return len(rows), any(r != 1 for r in results)

    def delete(self, conn: Any, keys: Sequence[Key]) -> int:
        names = [self.redis_key(normal_key(tuple(k))) for k in keys]
        return sum(int(conn.client.delete(*names[i:i + PIPELINE])) for i in range(0, len(names), PIPELINE))

    # -- walking keys: by SCAN, unordered on the server, sorted here (verification's extras pass) -----------

    def range_keys(self, conn: Any, lo: Key | None, hi: Key | None) -> list[Key]:
        return sorted({k for k in self.scan_keys(conn) if _inside(k, lo, hi)})  # SCAN may repeat a key

    def read_range(self, conn: Any, lo: Key | None, hi: Key | None, *, lock: bool = False) -> list[Row]:
        return self.read_keys(conn, self.range_keys(conn, lo, hi))

    def canonical_range(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[list[Row], list[Row]]:
        return self.canonical_keys(conn, self.range_keys(conn, lo, hi))

    def nth_key(self, conn: Any, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        keys = self.range_keys(conn, lo, hi)
        return keys[offset] if offset < len(keys) else None

    def every_nth_key(self, conn: Any, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
        return self.range_keys(conn, lo, hi)[step - 1::step]

    def key_digest(self, conn: Any, lo: Key | None, hi: Key | None) -> tuple[str, int, int] | None:
        return None

