"""Key logs: the outbox (written by the adapter) and the change log (written by triggers).

Both are the same shape, ``(id, migration, table_name, key_json, created_at)``, and live in the store that
was authoritative for the write, because the whole point is to record the key *in the same transaction*
as the write: if the transaction commits, the key is there; if it rolls back, so does the key. A relay
(:mod:`dualwrite.relay`) reads them in id order, mirrors the keys with the one mirror primitive and deletes
the entries it handled. Only keys are logged, never row images: the relay mirrors the row as it is *when
it runs*, so a late, repeated or reordered entry is harmless.

``table_name`` is always the spec's *source* table name (it names the mapping), whichever store holds the
log; which direction an entry is mirrored in follows from the store it was found in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import bookkeeping as bk
from dualwrite.keys import Key, encode_key
from dualwrite.store import Dialect, Store

OUTBOX = "dualwrite_outbox"
CHANGELOG = "dualwrite_changelog"
LOGS = (OUTBOX, CHANGELOG)


@dataclass(frozen=True)
class LogEntry:
    id: int
    table: str
    key: list[Any]
    age_seconds: float


def _ddl(store: Store, log: str) -> list[str]:
    now = bk.now_sql(store)
    default = f"({now})" if store.dialect is Dialect.SQLITE else now
    return [
        f"CREATE TABLE IF NOT EXISTS {log} (id {bk.identity_pk(store)}, migration VARCHAR(128) NOT NULL, "
        f"table_name VARCHAR(255) NOT NULL, key_json TEXT NOT NULL, created_at {bk.ts_type(store)} NOT NULL "
        f"DEFAULT {default}){bk.table_suffix(store)}",
        f"CREATE INDEX IF NOT EXISTS {log}_mig ON {log} (migration, id)",
    ]


def ensure_log(store: Store, log: str = OUTBOX) -> None:
    """Create a key log table if missing; safe to call from several processes at once."""
    if log not in LOGS:
        raise ValueError(f"unknown key log {log!r}")
    bk.create_all(store, _ddl(store, log))


def key_json(key: Key) -> str:
    """The wire form of a key as stored in a log (and in the repair queue): a JSON list."""
    return json.dumps(encode_key(tuple(key)))


def append_sql(store: Store, log: str = OUTBOX) -> str:
    """One-row INSERT for executemany: (migration, table_name, key_json)."""
    p = store.paramstyle
    return f"INSERT INTO {log} (migration, table_name, key_json) VALUES ({p}, {p}, {p})"


def pg_cte_sql(statement: str, log: str = OUTBOX) -> str:
    """Fold an outbox append into a PostgreSQL DML statement: one round trip instead of two.

    ``statement`` must end in a ``RETURNING`` clause; one outbox row is inserted per row it returns, so an
    UPDATE that matched nothing logs nothing. Parameters: the statement's, then migration, table, key_json.
    """
    return (f"WITH dw_w AS ({statement}) INSERT INTO {log} (migration, table_name, key_json) "
            f"SELECT %s, %s, %s FROM dw_w")


def age_seconds_sql(store: Store) -> str:
    """SQL: the age in seconds of a key-log entry (``created_at``, database clock)."""
    if store.dialect is Dialect.POSTGRESQL:
        return "EXTRACT(EPOCH FROM (clock_timestamp() - created_at))"
    if store.dialect is Dialect.MYSQL:
        return "TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6)) / 1000000"
    return "(julianday('now') - julianday(created_at)) * 86400.0"


def read_batch(conn: Any, store: Store, migration: str, *, log: str = OUTBOX, limit: int = 500,
               lock: bool = True) -> list[LogEntry]:
    """The oldest ``limit`` entries (id order), locked for this transaction where the engine can.

    ``SKIP LOCKED`` lets two relays (a continue-as-new overlap, a second worker) share a log without
    waiting on each other; a mirror is image-based, so which of them handles a key does not matter.
    """
    p = store.paramstyle
    sql = (f"SELECT id, table_name, key_json, {age_seconds_sql(store)} FROM {log} WHERE migration = {p} "
           f"ORDER BY id LIMIT {int(limit)}")
    if lock and store.dialect is not Dialect.SQLITE:
        sql += " FOR UPDATE SKIP LOCKED"
    cur = conn.cursor()
    cur.execute(sql, (migration,))
    rows = cur.fetchall()
    cur.close()
    return [LogEntry(id=int(r[0]), table=str(r[1]), key=list(json.loads(r[2])), age_seconds=float(r[3] or 0.0))
            for r in rows]


def delete_entries(conn: Any, store: Store, ids: Sequence[int], *, log: str = OUTBOX) -> int:
    """Delete handled entries by id (never by ``id <=``: a lower id may commit later and be unseen yet)."""
    p = store.paramstyle
    done = 0
    cur = conn.cursor()
    for start in range(0, len(ids), 500):
        part = list(ids[start:start + 500])
        cur.execute(f"DELETE FROM {log} WHERE id IN ({', '.join([p] * len(part))})", tuple(part))
        done += int(cur.rowcount or 0)
    cur.close()
    return done


def log_depth(store: Store, migration: str, *, log: str = OUTBOX) -> tuple[int, float | None]:
    """(entries waiting, age in seconds of the oldest) for one migration."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*), MAX({age_seconds_sql(store)}) FROM {log} WHERE migration = {p}", (migration,))
        n, age = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n), None if age is None else float(age)
