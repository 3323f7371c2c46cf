"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1), keys only.

The relay needs to know *which* rows changed, not their images: the mirror primitive re-reads the
authoritative row under the key's lock (docs/architecture.md, "A write, by strategy"). So only the key
columns of each change are decoded. That also makes REPLICA IDENTITY DEFAULT enough: the old key of an
UPDATE that moved the row and of a DELETE comes as a 'K' tuple holding only the replica identity columns
(the primary key), the new tuple of INSERT / UPDATE holds every column, with TOASTed columns left out
('u'), never a key column.

Formats: PostgreSQL's "Logical Replication Message Formats" (src/backend/replication/logical/proto.c).
Every integer is big-endian; a String is NUL-terminated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dualwrite.errors import PgOutputError


@dataclass
class Relation:
    """A Relation message: the columns of a table as the stream sends them."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: list[str]
    key_flags: list[bool]
    type_oids: list[int]


@dataclass
class Change:
    """One row change: the relation and the key values (text form, by column name) it touched."""

    op: str  # 'I' | 'U' | 'D'
    relation: Relation
    keys: list[dict[str, str | None]] = field(default_factory=list)


@dataclass
class Truncate:
    relations: list[Relation]


#: pgoutput timestamps count microseconds from 2000-01-01 UTC
_PG_EPOCH = 946_684_800


@dataclass
class Commit:
    commit_lsn: int
    end_lsn: int
    timestamp: int = 0

    def unix_time(self) -> float:
        return _PG_EPOCH + self.timestamp / 1e6


@dataclass
class Begin:
    final_lsn: int
    xid: int


Message = Change | Truncate | Commit | Begin | Relation | None


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list[str | None], int]:
    """TupleData: Int16 ncols, then per column 'n' (null), 'u' (unchanged TOAST), 't' Int32 len + text."""
    (n,) = struct.unpack_from("!h", buf, pos)
    pos += 2
    values: list[str | None] = []
    for _ in range(n):
        kind = buf[pos:pos + 1]
        pos += 1
        if kind in (b"n", b"u"):
            values.append(None)
        elif kind in (b"t", b"b"):
            (length,) = struct.unpack_from("!i", buf, pos)
            pos += 4
            values.append(buf[pos:pos + length].decode())
            pos += length
        else:
            raise PgOutputError(f"unknown tuple column kind {kind!r}")
    return values, pos


class Decoder:
    """Decodes a stream of pgoutput messages; keeps the relations it has been told about."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def decode(self, msg: bytes) -> Message:
        tag = msg[:1]
        if tag == b"B":
            final_lsn, _ts, xid = struct.unpack_from("!qqI", msg, 1)
            return Begin(final_lsn, xid)
        if tag == b"C":
            _flags, commit_lsn, end_lsn, ts = struct.unpack_from("!bqqq", msg, 1)
            return Commit(commit_lsn, end_lsn, ts)
        if tag == b"R":
            return self._relation(msg)
        if tag == b"I":
            (oid,) = struct.unpack_from("!I", msg, 1)
            rel = self._rel(oid)
            if msg[5:6] != b"N":
                raise PgOutputError("INSERT without a new tuple")
            values, _ = _tuple(msg, 6)
            return Change("I", rel, [self._key(rel, values)])
        if tag == b"U":
            (oid,) = struct.unpack_from("!I", msg, 1)
            rel = self._rel(oid)
            pos, keys = 5, []
            if msg[pos:pos + 1] in (b"K", b"O"):  # the old key (identity changed) or the old row (FULL)
                old, pos = _tuple(msg, pos + 1)
                keys.append(self._key(rel, old))
            if msg[pos:pos + 1] != b"N":
                raise PgOutputError("UPDATE without a new tuple")
            new, _ = _tuple(msg, pos + 1)
            keys.append(self._key(rel, new))
            return Change("U", rel, keys)
        if tag == b"D":
            (oid,) = struct.unpack_from("!I", msg, 1)
            rel = self._rel(oid)
            if msg[5:6] not in (b"K", b"O"):
                raise PgOutputError("DELETE without an old key")
            old, _ = _tuple(msg, 6)
            return Change("D", rel, [self._key(rel, old)])
        if tag == b"T":
            n, _opts = struct.unpack_from("!Ib", msg, 1)
            oids = struct.unpack_from(f"!{n}I", msg, 6)
            return Truncate([self._rel(o) for o in oids])
        if tag in (b"O", b"Y", b"M"):  # origin, type, logical message: nothing the relay needs
            return None
        raise PgOutputError(f"unknown pgoutput message {tag!r}")

    def _relation(self, msg: bytes) -> Relation:
        (oid,) = struct.unpack_from("!I", msg, 1)
        ns, pos = _string(msg, 5)
        name, pos = _string(msg, pos)
        ident = chr(msg[pos])
        (ncols,) = struct.unpack_from("!h", msg, pos + 1)
        pos += 3
        cols, flags, types = [], [], []
        for _ in range(ncols):
            flag = msg[pos]
            col, pos = _string(msg, pos + 1)
            typ, _typmod = struct.unpack_from("!Ii", msg, pos)
            pos += 8
            cols.append(col)
            flags.append(bool(flag & 1))
            types.append(typ)
        rel = Relation(oid, ns, name, ident, cols, flags, types)
        self.relations[oid] = rel
        return rel

    def _rel(self, oid: int) -> Relation:
        rel = self.relations.get(oid)
        if rel is None:
            raise PgOutputError(f"a change of relation {oid} arrived before its Relation message")
        return rel

    @staticmethod
    def _key(rel: Relation, values: list[str | None]) -> dict[str, str | None]:
        """Column name -> text value of the columns a tuple carries (a 'K' tuple: the identity columns,
        in the relation's column order, with the other columns sent as nulls)."""
        return {c: v for c, v in zip(rel.columns, values, strict=False)}
