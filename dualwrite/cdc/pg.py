"""PostgreSQL change capture: a publication and a ``pgoutput`` logical replication slot, read through SQL.

psycopg 3 has no replication-protocol support, and an activity wants bounded, resumable steps anyway, so
the slot is read with ``pg_logical_slot_peek_binary_changes`` (which does not consume anything) and moved
with ``pg_replication_slot_advance`` only after the batch's keys were mirrored. A worker killed between
the two re-reads the batch: harmless, because a mirror copies the authoritative row as it is now. The
slot is the checkpoint; nothing else has to be stored.

The slot is created before the first backfill range is copied (relay setup runs at PREPARE), so every
change committed after the copy's snapshot of a row is captured and re-mirrored: live changes win over
the backfill.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.cdc.pgoutput import Change, Commit, Decoder, Relation, Truncate

# re-exported: dualwrite.cdc.capture and dualwrite.cdc.binlog name them through this module
from dualwrite.errors import CaptureError as CaptureError
from dualwrite.errors import DualwriteError
from dualwrite.errors import SchemaChangedError as SchemaChangedError
from dualwrite.errors import SlotBusyError as SlotBusyError
from dualwrite.store import Kind, Store


def schema_change(store: Store, table: str, expected: Sequence[str], seen: Sequence[str]) -> SchemaChangedError | None:
    """The error to stop capture with when the stream's columns of ``table`` differ from the mapping's."""
    added = [c for c in seen if c not in expected]
    dropped = [c for c in expected if c not in seen]
    if not added and not dropped:
        return None
    what = ", ".join([*(f"column {c} added" for c in added), *(f"column {c} dropped" for c in dropped)])
    return SchemaChangedError(f"table {table} changed on store {store.name!r} during the migration: {what}; nothing "
                         "after the change was mirrored (the capture position stays before it): update the spec "
                         "(or undo the change), then restart the relay")


def capture_names(migration: str, store: str = "") -> tuple[str, str]:
    """(slot, publication) of a migration on one store: lower-case, at most 63 characters, stable. Slot
    names are cluster-wide, so the store's name is in the slot's (old and new may share a cluster)."""
    digest = hashlib.blake2s(migration.encode(), digest_size=4).hexdigest()
    where = hashlib.blake2s(f"{migration}\0{store}".encode(), digest_size=4).hexdigest()
    base = "".join(ch if ch.isalnum() else "_" for ch in migration.lower())[:40]
    return f"dw_{base}_{where}", f"dw_pub_{base}_{digest}"


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@contextlib.contextmanager
def _session(store: Store) -> Iterator[Any]:
    """A pooled connection in autocommit (slot functions refuse to run in a transaction that wrote, and a
    peek must not hold a snapshot), put back in transaction mode before it returns to the pool: a pooled
    connection left in autocommit breaks every caller that relies on transactions (the copy's temporary
    table is ``ON COMMIT DELETE ROWS``: its rows vanished before they were inserted)."""
    conn = store.engine.raw_connection()
    driver: Any = conn.driver_connection
    try:
        driver.autocommit = True
        yield conn
    finally:
        try:
            driver.autocommit = False
        except Exception:  # noqa: BLE001 - a broken connection: never hand it out again
            conn.invalidate()
        conn.close()


def _qualified(store: Store, table: str) -> str:
    return ".".join(store.quote(p) for p in table.split(".")) if "." in table else store.quote(table)


def _create_publication(cur: Any, pub: str, targets: str) -> bool:
    """CREATE PUBLICATION; False when a concurrent setup created it first (two setups of one migration race
    at PREPARE: the relay's and the write denial's). CREATE PUBLICATION has no IF NOT EXISTS, and the loser
    of the race sees a unique violation on ``pg_publication_pubname_index``, not "already exists"."""
    try:
        cur.execute(f"CREATE PUBLICATION {pub} FOR TABLE {targets}")
    except Exception as exc:
        if "already exists" in str(exc) or "pg_publication_pubname_index" in str(exc):
            return False
        raise
    return True


def setup(store: Store, migration: str, tables: Sequence[str]) -> bool:
    """Create the publication (for exactly ``tables``) and the slot if missing; True when the slot is new.

    Idempotent: an existing publication is set to the tables, an existing slot is kept (with its position:
    a restarted relay resumes where it left off)."""
    slot, pub = capture_names(migration, store.name)
    with _session(store) as conn:
        cur = conn.cursor()
        targets = ", ".join(_qualified(store, t) for t in tables)
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,))
        if cur.fetchone() is not None or not _create_publication(cur, pub, targets):
            # only when the tables changed: setup runs again at every phase entry (and under the write fence),
            # and ALTER PUBLICATION locks the tables
            cur.execute("SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT quote_ident(schemaname) || '.' || "
                        "quote_ident(tablename) AS x FROM pg_publication_tables WHERE pubname = %s) t", (pub,))
            have = str(cur.fetchone()[0] or "")
            cur.execute("SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT quote_ident(n.nspname) || '.' || "
                        "quote_ident(c.relname) AS x FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.oid = ANY(%s::regclass[])) t", ([_qualified(store, t) for t in tables],))
            if have != str(cur.fetchone()[0] or ""):
                cur.execute(f"ALTER PUBLICATION {pub} SET TABLE {targets}")
        cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if cur.fetchone() is not None:
            return False
        try:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        except Exception as exc:
            text = str(exc)
            if "already exists" in text:
                return False
            if "wal_level" in text:
                raise CaptureError(f"store {store.name!r}: logical decoding needs wal_level=logical (a restart "
                                   "is needed); `dualwrite check` lists what to change") from None
            raise
        return True


#: how long teardown keeps ending the sessions that hold the slot before it gives up (and is retried)
TEARDOWN_SECONDS = 30.0


def teardown(store: Store, migration: str, *, seconds: float = TEARDOWN_SECONDS) -> None:
    """Drop the slot (its retained WAL is released) and the publication. Idempotent.

    A slot in use cannot be dropped, and one is in use whenever a capture activity reads it: one of a relay
    that was terminated keeps running until its heartbeat fails. Skipping an active slot left it behind for
    ever, so the session that holds it is ended (``pg_terminate_backend``; its activity fails and is not
    retried once the migration ended) and the drop is tried again until the slot is gone. Raises
    :class:`CaptureError` (the caller's activity is retried) when it is still there after ``seconds``."""
    slot, pub = capture_names(migration, store.name)
    deadline = time.monotonic() + seconds
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute(f"DROP PUBLICATION IF EXISTS {pub}")
        while True:
            cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
            if row is None:
                return
            if row[0] is not None:
                cur.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            try:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except Exception as exc:
                if "does not exist" not in str(exc) and "is active for PID" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                raise CaptureError(f"store {store.name!r}: the replication slot {slot} of migration {migration!r} "
                                   f"is still in use after {seconds:.0f}s of ending its sessions")
            time.sleep(0.05)


def slot_exists(store: Store, migration: str) -> bool:
    slot, _ = capture_names(migration, store.name)
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return cur.fetchone() is not None


def _text_value(text: str | None, kind: Kind) -> Any:
    """A key value in PostgreSQL's text output form -> the Python value the mirror reads keys by."""
    if text is None:
        return None
    if kind is Kind.INT:
        return int(text)
    if kind is Kind.BOOL:
        return text == "t"
    if kind is Kind.FLOAT:
        return float(text)
    if kind is Kind.DECIMAL:
        return decimal.Decimal(text)
    if kind is Kind.UUID:
        return uuid.UUID(text)
    if kind is Kind.BYTES:
        return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        value = dt.datetime.fromisoformat(text)
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo is not None else value
    if kind is Kind.DATE:
        return dt.date.fromisoformat(text)
    if kind is Kind.TIME:
        return dt.time.fromisoformat(text)
    return text


@dataclass
class TableKeys:
    """How to find the key of one captured table: its name in the stream and its key columns."""

    table: str  # the spec's name of the table on this store (schema.table or table)
    key: list[str]
    kinds: list[Kind]
    #: the columns the mapping was compiled against: a stream that shows others stops capture
    columns: list[str] | None = None


@dataclass
class Batch:
    """Keys changed by whole transactions, per table, and the LSN to advance the slot to afterwards."""

    keys: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    changes: int = 0
    transactions: int = 0
    end_lsn: int | None = None
    #: the WAL flushed before the read: when the read ended below its limit, everything before it was seen
    idle_lsn: int | None = None
    truncated: list[str] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    lag_seconds: float = 0.0


def _match(tables: Sequence[TableKeys], namespace: str, name: str) -> TableKeys | None:
    for t in tables:
        if t.table == name or t.table == f"{namespace}.{name}":
            return t
    return None


def read_batch(store: Store, migration: str, tables: Sequence[TableKeys], limit: int = 5000) -> Batch:
    """Decode up to about ``limit`` changes (whole transactions) from the slot without consuming them."""
    slot, pub = capture_names(migration, store.name)
    reading = _Reading(store, tables)
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_current_wal_flush_lsn()::text")
        idle = parse_lsn(str(cur.fetchone()[0]))
        try:
            cur.execute("SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
                        "'proto_version', '1', 'publication_names', %s)", (slot, limit, pub))
        except Exception as exc:
            known = _slot_error(exc, store, migration, slot)
            if known is None:
                raise
            raise known from None
        rows = 0
        for _lsn_text, data in cur:
            rows += 1
            reading.take(reading.decoder.decode(bytes(data)))
        # the peek's limit counts every message it returns (BEGIN, RELATION, COMMIT too), not changes, and is
        # checked only at commits: only a read that returned fewer rows than the limit saw all the flushed WAL
        if rows < limit:
            reading.out.idle_lsn = idle
    return reading.out


def _slot_error(exc: Exception, store: Store, migration: str, slot: str) -> DualwriteError | None:
    """What to raise when the slot cannot be read: busy, missing, or (None) the driver's own error."""
    if "is active for PID" in str(exc):
        return SlotBusyError(f"replication slot {slot} is in use by another session")
    if "does not exist" in str(exc):
        return CaptureError(f"store {store.name!r}: the replication slot {slot} of migration {migration!r} is "
                            "missing (dropped by hand?); restart the relay to create it again, then verify")
    return None


class _Reading:
    """One peek at the slot, decoded: the keys of whole transactions go to ``out``; those of the transaction
    being read wait in ``pending`` until its COMMIT, so a batch never ends inside a transaction."""

    def __init__(self, store: Store, tables: Sequence[TableKeys]) -> None:
        self.store = store
        self.tables = tables
        self.decoder = Decoder()
        self.out = Batch()
        self.pending: dict[str, list[tuple[Any, ...]]] = {}

    def take(self, msg: object) -> None:
        if isinstance(msg, Relation):
            self._relation(msg)
        elif isinstance(msg, Change):
            self._change(msg)
        elif isinstance(msg, Truncate):
            for rel in msg.relations:
                t = _match(self.tables, rel.namespace, rel.name)
                if t is not None:
                    self.out.truncated.append(t.table)
        elif isinstance(msg, Commit):
            self._commit(msg)

    def _relation(self, msg: Relation) -> None:
        """A table's columns as the stream sees them: capture stops when they are not the mapping's."""
        t = _match(self.tables, msg.namespace, msg.name)
        if t is not None and t.columns is not None:
            changed = schema_change(self.store, t.table, t.columns, msg.columns)
            if changed is not None:
                raise changed

    def _change(self, msg: Change) -> None:
        t = _match(self.tables, msg.relation.namespace, msg.relation.name)
        if t is None:
            self.out.unknown.add(f"{msg.relation.namespace}.{msg.relation.name}")
            return
        for cols in msg.keys:
            if all(cols.get(k) is not None for k in t.key):
                key = tuple(_text_value(cols[k], kind) for k, kind in zip(t.key, t.kinds, strict=True))
                self.pending.setdefault(t.table, []).append(key)
        self.out.changes += 1

    def _commit(self, msg: Commit) -> None:
        out = self.out
        for table, keys in self.pending.items():
            out.keys.setdefault(table, []).extend(keys)
        self.pending = {}
        out.transactions += 1
        out.end_lsn = msg.end_lsn
        if out.transactions == 1:  # the oldest change of the batch: how far capture is behind
            out.lag_seconds = max(0.0, time.time() - msg.unix_time())


def confirmed(store: Store, migration: str) -> int | None:
    """The slot's position: everything before it was applied (None: no slot)."""
    slot, _ = capture_names(migration, store.name)
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        return None if row is None or row[0] is None else parse_lsn(str(row[0]))


def advance(store: Store, migration: str, lsn: int) -> None:
    """Move the slot past everything up to ``lsn`` (the end of the last transaction applied)."""
    slot, _ = capture_names(migration, store.name)
    with _session(store) as conn:
        cur = conn.cursor()
        # never backwards: a replayed batch after a kill may name a point the slot has passed already
        try:
            cur.execute("SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND confirmed_flush_lsn < %s::pg_lsn", (_lsn(lsn), slot, _lsn(lsn)))
        except Exception as exc:
            if "is active for PID" in str(exc):
                raise SlotBusyError(f"replication slot {slot} is in use by another session") from None
            raise


def current_lsn(store: Store) -> int:
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_current_wal_lsn()::text")
        return parse_lsn(str(cur.fetchone()[0]))


def lag(store: Store, migration: str) -> tuple[int, bool] | None:
    """(bytes of WAL the slot holds back behind the current position, active) or None without a slot."""
    slot, _ = capture_names(migration, store.name)
    with _session(store) as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active "
                    "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        return None if row is None else (int(row[0] or 0), bool(row[1]))
