"""MariaDB / MySQL change capture: the row-based binlog, read with ``mysql-replication`` (on PyMySQL).

The relay connects as a replica (a server id of its own), reads from the last checkpointed position up to
the end of the binlog or about ``limit`` row changes (whole transactions only), mirrors the keys, and only
then stores the position after the last transaction applied in the control store. A worker killed in
between re-reads those transactions: harmless (the mirror copies the authoritative row as it is now).

Positions are GTID states on MariaDB (``0-1-42,1-1-7``: the last transaction applied per replication
domain; mysql-replication resumes MariaDB only from GTIDs) and binlog file + offset on MySQL. The server
needs ``log_bin``, ``binlog_format=ROW``,
``binlog_row_image=FULL`` and on MariaDB ``binlog_row_metadata=FULL`` (without it column names arrive as
``UNKNOWN_COL0``...): ``dualwrite check`` verifies them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite import control
from dualwrite.cdc.pg import CaptureError, TableKeys, schema_change
from dualwrite.keys import decode_value
from dualwrite.store import Store

#: MariaDB's GTID event flag of a statement that is its own transaction (DDL: no XID/COMMIT event follows)
FL_STANDALONE = 1

log = logging.getLogger(__name__)

#: a read slower than this is logged (counts only): the relay or a verification waiting on the binlog
SLOW_READ_SECONDS = 5.0

#: the control store's checkpoint scope of a store's binlog position
SCOPE = "cdc:binlog:{store}"


def _scope(store: Store) -> str:
    return SCOPE.format(store=store.name)


def replica_server_id(migration: str, store: Store) -> int:
    """A server id for one replica connection, away from the small numbers real servers use. Random per
    read: the server drops an older connection of the same id, and the relay and a catch-up read at once."""
    digest = hashlib.blake2s(f"{migration}\0{store.name}\0{secrets.token_hex(4)}".encode(), digest_size=4).digest()
    return 1_000_000 + int.from_bytes(digest, "big") % 1_000_000_000


def _settings(store: Store) -> dict[str, Any]:
    url = store.engine.url
    return {"host": url.host or "127.0.0.1", "port": int(url.port or 3306), "user": url.username or "root",
            "password": url.password or ""}


#: a position: ("gtid", "0-1-42,1-1-7") on MariaDB, (file, "offset") on MySQL
Position = tuple[str, str]
GTID = "gtid"


def current_position(store: Store) -> Position:
    """The end of the binlog now: the GTID state on MariaDB, file and offset on MySQL."""
    mariadb = store.is_mariadb
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
        gtid = ""
        if mariadb and row:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            gtid = str(cur.fetchone()[0] or "")
        cur.close()
        conn.rollback()
    if not row:
        raise CaptureError(f"store {store.name!r}: the binary log is off (log_bin); a restart with --log-bin is "
                           "needed; `dualwrite check` lists every setting")
    return (GTID, gtid) if mariadb else (str(row[0]), str(row[1]))


def load_position(control_store: Store, migration: str, store: Store) -> Position | None:
    cp = control.load_checkpoint(control_store, migration, _scope(store), 0)
    if cp is None or not cp.cursor:
        return None
    return str(cp.cursor[0]), str(cp.cursor[1])


def _merge_gtid(state: str, gtid: str) -> str:
    """The GTID state after transaction ``gtid`` (domain-server-seq): the newest per domain."""
    domains = {p.split("-")[0]: p for p in state.split(",") if p}
    domains[gtid.split("-")[0]] = gtid
    return ",".join(domains[d] for d in sorted(domains, key=int))


def gtid_reached(state: str, point: str) -> bool:
    """Does GTID state ``state`` include every transaction of ``point`` (per domain, seq >= point's)?"""
    have = {p.split("-")[0]: int(p.split("-")[2]) for p in state.split(",") if p}
    return all(have.get(p.split("-")[0], -1) >= int(p.split("-")[2]) for p in point.split(",") if p)


def save_position(control_store: Store, migration: str, store: Store, pos: Position) -> None:
    """Checkpoint the position (after the changes before it were applied). The ``batches`` counter of
    the checkpoint row orders saves, so a stale retry cannot rewind it."""
    cp = control.load_checkpoint(control_store, migration, _scope(store), 0)
    n = cp.batches + 1 if cp is not None else 1
    control.save_checkpoint(control_store, migration, _scope(store), 0, [pos[0], pos[1]], 0, n)


def setup(control_store: Store, migration: str, store: Store) -> bool:
    """Record where capture starts (the current end of the binlog) unless a position is stored already.
    True when capture starts now."""
    if load_position(control_store, migration, store) is not None:
        return False
    save_position(control_store, migration, store, current_position(store))
    return True


def purged_past(store: Store, pos: Position) -> str | None:
    """Why the binlog no longer holds everything after ``pos`` (the oldest binlog starts after it), or None.

    MariaDB: the GTID state at the start of the oldest binlog must be included in ``pos``; MySQL: ``pos``'s
    file must still be there."""
    with store.connect() as conn:
        cur = conn.cursor()
        try:
            cur.execute("SHOW BINARY LOGS")
            rows = cur.fetchall()
            if not rows:
                return None
            oldest = str(rows[0][0])
            if pos[0] != GTID:
                return None if pos[0] >= oldest else f"the binlog {pos[0]} was purged (the oldest is {oldest})"
            cur.execute("SELECT BINLOG_GTID_POS(%s, 4)", (oldest,))
            start = str((cur.fetchone() or [""])[0] or "")
        finally:
            cur.close()
            conn.rollback()
    if gtid_reached(pos[1], start):
        return None
    return (f"the binlog was purged past the stored GTID position {pos[1] or '(empty)'} (the oldest binlog "
            f"{oldest} starts at {start})")


def teardown(control_store: Store, migration: str, store: Store) -> None:
    control.clear_checkpoints(control_store, migration, _scope(store))


def _value(value: Any, kind: Any) -> Any:
    return decode_value(value, kind) if isinstance(value, str) else value


@dataclass
class Batch:
    keys: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    changes: int = 0
    transactions: int = 0
    end: Position | None = None
    unknown: set[str] = field(default_factory=set)
    lag_seconds: float = 0.0
    truncated: list[str] = field(default_factory=list)
    """Captured tables a TRUNCATE emptied in the batch's transactions (logged as a statement, no rows)."""


def read_batch(control_store: Store, migration: str, store: Store, tables: Sequence[TableKeys],
               limit: int = 5000) -> Batch:
    """Keys changed by whole transactions after the stored position (at most about ``limit`` changes), each
    transaction once: a dump connection the library re-opens resumes after the last whole transaction read,
    and on MariaDB a transaction already taken (by GTID) is skipped should the server send it again."""
    from pymysqlreplication.event import (  # noqa: PLC0415 - only workers that capture need it
        GtidEvent,
        MariadbGtidEvent,
        QueryEvent,
        RotateEvent,
        XidEvent,
    )
    from pymysqlreplication.row_event import (  # noqa: PLC0415 - as above
        DeleteRowsEvent,
        UpdateRowsEvent,
        WriteRowsEvent,
    )

    from dualwrite.cdc.binlog_stream import ResumingStream  # noqa: PLC0415 - as above

    start = load_position(control_store, migration, store)
    if start is None:
        raise CaptureError(f"store {store.name!r}: no binlog position is stored for migration {migration!r}; "
                           "restart the relay (its setup records one), then verify")
    mariadb = start[0] == GTID
    schema = store.engine.url.database or ""
    by_name = {t.table.rpartition(".")[2]: t for t in tables}
    # only_tables: the library skips the rows of other tables undecoded (a read costs what the captured
    # tables' changes warrant, not the whole schema's); enable_logging off: it would log its arguments per read
    stream = ResumingStream(
        start, connection_settings=_settings(store), server_id=replica_server_id(migration, store),
        blocking=False, resume_stream=True, enable_logging=False,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
                     MariadbGtidEvent, GtidEvent],
        only_schemas=[schema] if schema else None, only_tables=list(by_name), is_mariadb=mariadb)
    r = _Reading(Batch(), mariadb, start[1], store, schema, by_name)
    began = time.monotonic()
    try:
        for ev in stream:
            if stream.connections != r.connections:
                r.reconnected(stream.connections)
            if isinstance(ev, MariadbGtidEvent):
                if r.begin(stream, str(ev.gtid), int(ev.flags)) and r.out.changes >= limit:
                    break
            elif isinstance(ev, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                r.rows(ev, isinstance(ev, UpdateRowsEvent))
            elif isinstance(ev, XidEvent) or (isinstance(ev, QueryEvent) and ev.query.strip().upper() == "COMMIT"):
                r.complete(stream)
                if r.out.changes >= limit:
                    break
            elif isinstance(ev, QueryEvent):
                r.statement(ev)
        else:
            # the end of what the server sent: only a standalone statement (DDL, no COMMIT event) is known to be
            # whole there; a transaction whose COMMIT was not seen yet is read again next time, never half
            # applied or skipped
            if r.txn_gtid is not None and r.standalone and not r.pending:
                r.complete(stream)
    finally:
        stream.close()
    took = time.monotonic() - began
    if took >= SLOW_READ_SECONDS:
        log.info("binlog read of %s took %.1f s: %d transactions, %d changes of %d captured tables, %d reconnects",
                 store.name, took, r.out.transactions, r.out.changes, len(by_name), stream.connections - 1)
    if r.first_ts is not None:
        r.out.lag_seconds = max(0.0, time.time() - r.first_ts)
    return r.out


@dataclass
class _Reading:
    """One read of the binlog: whole transactions go to ``out``; the one being read waits in ``pending``,
    so that a batch never ends inside a transaction."""

    out: Batch
    mariadb: bool
    state: str
    """MariaDB: the GTID state after the last whole transaction."""
    store: Store
    schema: str
    by_name: dict[str, TableKeys]
    pending: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    pending_changes: int = 0
    pending_truncated: list[str] = field(default_factory=list)
    first_ts: float | None = None
    txn_gtid: str | None = None
    """MariaDB: the transaction being read."""
    standalone: bool = False
    """... and whether it is a statement with no COMMIT of its own (DDL)."""
    seen: bool = False
    """MariaDB: the transaction being read is one the state already holds (sent again): its events are skipped."""
    connections: int = 1

    def begin(self, stream: Any, gtid: str, flags: int) -> bool:
        """MariaDB: a transaction starts. True when that completed the previous one (a DDL has no COMMIT)."""
        completed = self.txn_gtid is not None and not self.seen
        if completed:
            self.complete(stream)
        self.pending, self.pending_changes, self.pending_truncated = {}, 0, []
        self.txn_gtid, self.standalone = gtid, bool(flags & FL_STANDALONE)
        self.seen = gtid_reached(self.state, gtid)
        return completed

    def reconnected(self, connections: int) -> None:
        """The library opened a new dump connection (at the position after the last whole transaction): the
        transaction read in part on the old one comes again from its start."""
        self.connections = connections
        self.pending, self.pending_changes, self.pending_truncated = {}, 0, []
        self.txn_gtid, self.standalone, self.seen = None, False, False

    def complete(self, stream: Any) -> None:
        """The pending transaction is whole: its keys join the batch, the batch ends after it."""
        if self.seen:  # MariaDB: a transaction the state already holds
            self.txn_gtid, self.seen = None, False
            return
        for table, keys in self.pending.items():
            self.out.keys.setdefault(table, []).extend(keys)
        self.out.changes += self.pending_changes
        self.out.truncated += self.pending_truncated
        self.pending, self.pending_changes, self.pending_truncated = {}, 0, []
        self.out.transactions += 1
        if self.mariadb:
            if self.txn_gtid is not None:
                self.state = _merge_gtid(self.state, self.txn_gtid)
                self.txn_gtid = None
            self.out.end = (GTID, self.state)
        else:
            self.out.end = (str(stream.log_file), str(stream.log_pos))
        stream.resume = self.out.end

    def rows(self, ev: Any, update: bool) -> None:
        """The keys of a rows event (an update's before and after images both: a key may change)."""
        if self.seen:
            return
        t = _captured_table(self.store, self.schema, self.by_name, ev, self.out)
        if t is None:
            return
        if self.first_ts is None:
            self.first_ts = float(ev.timestamp)
        for row in ev.rows:
            images = [row["before_values"], row["after_values"]] if update else [row["values"]]
            for img in images:
                self.pending.setdefault(t.table, []).append(
                    tuple(_value(img.get(k), kind) for k, kind in zip(t.key, t.kinds, strict=True)))
            self.pending_changes += 1


    def statement(self, ev: Any) -> None:
        """A statement logged as such (DDL): a TRUNCATE of a captured table empties it without rows events,
        so it is kept with its transaction and reported once that is whole (like PostgreSQL's Truncate)."""
        if self.seen:
            return
        raw = ev.schema
        current = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw or "")
        for table in truncated_tables(str(ev.query), current):
            schema, _, name = table.rpartition(".")
            if name in self.by_name and (not self.schema or (schema or current) == self.schema):
                self.pending_truncated.append(self.by_name[name].table)


_TRUNCATE = re.compile(r"^\s*(?:/\*.*?\*/\s*)*TRUNCATE\s+(?:TABLE\s+)?(.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_ALTER = re.compile(r"^\s*(?:/\*.*?\*/\s*)*ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE\s+(?:IF\s+EXISTS\s+)?",
                    re.IGNORECASE | re.DOTALL)
_EMPTIES_PARTITION = re.compile(r"\b(?:TRUNCATE|DROP|EXCHANGE)\s+PARTITION\b", re.IGNORECASE)
_EXCHANGED_WITH = re.compile(r"\bWITH\s+TABLE\s+", re.IGNORECASE)
_IDENT = re.compile(r"`((?:[^`]|``)+)`|([A-Za-z0-9_$]+)")


def _name_at(text: str, pos: int) -> tuple[str | None, int]:
    """The ``[db.]t`` name starting at ``pos`` (backquoted parts may hold dots and doubled backquotes), as
    ``db.t`` or ``t``, and where it ends; None when there is none."""
    parts: list[str] = []
    while pos < len(text):
        ident = _IDENT.match(text, pos)
        if ident is None:
            return None, pos
        parts.append(ident.group(1).replace("``", "`") if ident.group(1) is not None else ident.group(2))
        pos = ident.end()
        if pos >= len(text) or text[pos] != ".":
            break  # e.g. a trailing comment or the rest of the statement: the name is read
        pos += 1
    if not parts or len(parts) > 2:
        return None, pos
    return ".".join(parts), pos


def truncated_tables(query: str, schema: str = "") -> list[str]:
    """The tables a statement empties without row events, as ``db.t`` or ``t``: ``TRUNCATE [TABLE] [db.]t``,
    and ``ALTER TABLE [db.]t ... TRUNCATE / DROP / EXCHANGE PARTITION`` (rows of a partition gone or swapped;
    an exchange changes the ``WITH TABLE`` too). None for any other statement."""
    m = _TRUNCATE.match(query)
    if m is not None:
        name, _ = _name_at(m.group(1), 0)
        return [] if name is None else [name]
    m = _ALTER.match(query)
    if m is None:
        return []
    name, end = _name_at(query, m.end())
    if name is None or _EMPTIES_PARTITION.search(query, end) is None:
        return []
    out = [name]
    other = _EXCHANGED_WITH.search(query, end)
    if other is not None:
        exchanged, _ = _name_at(query, other.end())
        if exchanged is not None:
            out.append(exchanged)
    return out


def _captured_table(store: Store, schema: str, by_name: dict[str, TableKeys], ev: Any, out: Batch
                    ) -> TableKeys | None:
    """The captured table a rows event is about (None, and noted as unknown, for any other table); raises
    the schema change when the event's columns are not the ones capture started with."""
    t = by_name.get(ev.table)
    if t is None or (schema and ev.schema != schema):
        out.unknown.add(f"{ev.schema}.{ev.table}")
        return None
    if t.columns is not None:
        changed = schema_change(store, t.table, t.columns, [str(c.name) for c in ev.columns])
        if changed is not None:
            raise changed
    return t

