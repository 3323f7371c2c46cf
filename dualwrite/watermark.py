"""Async watermarks: how far each ``async`` writer's in-memory queue has reached the other store, durably.

The ``async`` strategy acknowledges a write after the authoritative commit and mirrors it from a queue in the
writer's process. A verification that compares the stores while keys sit in such a queue sees differences
that are not lost, only late: a compare-only gate would be refused for them, and a repair could race the
queue. So every async writer records, about once a second, one row in the control store
(``dualwrite_async_watermarks``): its heartbeat and ``flushed_to``, the database time before which every key it
queued has been mirrored (or handed to the durable repair queue). ``flushed_to`` is the heartbeat minus the
age of the oldest key still queued or being mirrored (the heartbeat itself when the queue is empty).

A writer that stops cleanly deletes its row. A writer killed with keys queued stops heart-beating: its row goes
stale, and its unflushed tail is exactly what verification must find and repair
(:mod:`dualwrite.async_settle` waits for live writers only). Timestamps are the database's own clock, like
every control table, so writers on skewed hosts compare with the verification's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dualwrite import bookkeeping as bk
from dualwrite.store import Dialect, Store

WATERMARKS = "dualwrite_async_watermarks"

__all__ = ["WATERMARKS", "WriterMark", "db_now", "ddl", "forget", "marks", "record"]


def ddl(store: Store) -> list[str]:
    """The table's DDL (created with the other control tables, :func:`dualwrite.control.ensure_schema`)."""
    ts = bk.ts_type(store)
    return [f"CREATE TABLE IF NOT EXISTS {WATERMARKS} (migration VARCHAR(128) NOT NULL, "
            f"writer_id VARCHAR(255) NOT NULL, heartbeat_at {ts} NOT NULL, flushed_to {ts} NOT NULL, "
            f"PRIMARY KEY (migration, writer_id)){bk.table_suffix(store)}"]


def record(store: Store, migration: str, writer_id: str, lag_seconds: float) -> None:
    """This writer is alive, and every key it queued more than ``lag_seconds`` ago has left its queue."""
    p = store.paramstyle
    behind, param = bk.now_plus(store, -max(0.0, float(lag_seconds)))
    cols = "(migration, writer_id, heartbeat_at, flushed_to)"
    values = f"VALUES ({p}, {p}, {bk.now_sql(store)}, {behind})"
    if store.dialect is Dialect.MYSQL:
        sql = (f"INSERT INTO {WATERMARKS} {cols} {values} ON DUPLICATE KEY UPDATE "
               "heartbeat_at = VALUES(heartbeat_at), flushed_to = VALUES(flushed_to)")
    else:
        sql = (f"INSERT INTO {WATERMARKS} {cols} {values} ON CONFLICT (migration, writer_id) DO UPDATE SET "
               "heartbeat_at = excluded.heartbeat_at, flushed_to = excluded.flushed_to")
    bk.execute(store, sql, [migration, writer_id, param])


def forget(store: Store, migration: str, writer_id: str) -> None:
    """A writer that closed cleanly (its queue flushed or handed to the repair queue) has nothing to wait for."""
    p = store.paramstyle
    bk.execute(store, f"DELETE FROM {WATERMARKS} WHERE migration = {p} AND writer_id = {p}", [migration, writer_id])


def db_now(store: Store) -> Any:
    """The control store's clock now: the instant a verification starts from (passed back to :func:`marks`)."""
    return bk.query(store, f"SELECT {bk.now_sql(store)}")[0][0]


@dataclass(frozen=True)
class WriterMark:
    writer_id: str
    live: bool
    """Heart-beating within the liveness window; a dead writer's queue is lost, never waited for."""
    passed: bool
    """``flushed_to`` is at or after the instant asked about."""


def marks(store: Store, migration: str, since: Any, *, live_seconds: float) -> list[WriterMark]:
    """Every async writer of ``migration``: live or not, and whether its queue has flushed up to ``since``."""
    p = store.paramstyle
    live_since, param = bk.now_plus(store, -float(live_seconds))
    rows = bk.query(store, f"SELECT writer_id, CASE WHEN heartbeat_at >= {live_since} THEN 1 ELSE 0 END, "
                           f"CASE WHEN flushed_to >= {p} THEN 1 ELSE 0 END FROM {WATERMARKS} "
                           f"WHERE migration = {p} ORDER BY writer_id", [param, since, migration])
    return [WriterMark(str(r[0]), bool(int(r[1])), bool(int(r[2]))) for r in rows]
