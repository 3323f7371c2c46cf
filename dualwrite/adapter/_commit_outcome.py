"""Did a commit whose reply was lost commit? The question a strict write must answer before it says "failed".

A COMMIT can reach the server and commit while its reply is lost (a dropped connection, a proxy reset): the
driver raises, yet the write stands. For ``strict`` that matters twice over - the other store already has
the write, and the application is about to be told that neither store does. So before the strategy
restores the other store and raises, it asks the authoritative store what happened, through a marker
taken inside the transaction:

- PostgreSQL: the transaction id (``txid_current()``, appended to the write's own ``RETURNING`` list when it
  has one, so it costs no round trip), whose fate ``txid_status()`` reports afterwards
  ('committed', 'aborted', or 'in progress' while the server still finishes it);
- MariaDB / MySQL: a marker row in ``dualwrite_strict_notes`` inserted by the transaction; a locking read
  of it afterwards waits until that transaction has ended, then finds the row only if it committed;
- SQLite: no marker - an embedded commit that raised did not happen.

The answer is "unknown" when the store cannot be asked within a few seconds; the caller then keeps its
old behaviour (restore, raise, let the note repair it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dualwrite.store import Dialect, Store

__all__ = ["MARKER_TABLE", "CommitMarker", "Outcome", "outcome_of", "take_marker", "take_marker_async"]

MARKER_TABLE = "*"
"""``table_name`` of a marker row in the notes table: no migrated table has that name."""


class Outcome(StrEnum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CommitMarker:
    """What identifies one authoritative transaction after its connection is gone."""

    dialect: Dialect
    value: int  # PostgreSQL: the transaction id; MySQL: the marker row's id


def take_marker(dbapi_conn: Any, store: Store, notes_table: str, migration: str, token: str) -> CommitMarker | None:
    """Inside the open authoritative transaction: the marker to ask about it later (None on SQLite)."""
    cur = dbapi_conn.cursor()
    try:
        if store.dialect is Dialect.POSTGRESQL:
            cur.execute("SELECT txid_current()")
            return CommitMarker(store.dialect, int(cur.fetchone()[0]))
        if store.dialect is Dialect.MYSQL:
            cur.execute(f"INSERT INTO {notes_table} (migration, table_name, key_json, token) "
                        "VALUES (%s, %s, '[]', %s)", (migration, MARKER_TABLE, token))
            return CommitMarker(store.dialect, int(cur.lastrowid))
        return None
    finally:
        cur.close()


async def take_marker_async(conn: Any, store: Store, notes_table: str, migration: str, token: str
                            ) -> CommitMarker | None:
    """:func:`take_marker` on an SQLAlchemy ``AsyncConnection`` (the asyncio adapter's open transaction)."""
    import sqlalchemy as sa  # noqa: PLC0415 - only the asyncio adapter needs it here

    if store.dialect is Dialect.POSTGRESQL:
        res = await conn.exec_driver_sql("SELECT txid_current()")
        return CommitMarker(store.dialect, int(res.scalar_one()))
    if store.dialect is Dialect.MYSQL:
        res = await conn.execute(sa.text(f"INSERT INTO {notes_table} (migration, table_name, key_json, token) "
                                         "VALUES (:migration, :marker, '[]', :token)"),
                                 {"migration": migration, "marker": MARKER_TABLE, "token": token})
        return CommitMarker(store.dialect, int(res.lastrowid))
    return None


def outcome_of(store: Store, marker: CommitMarker | None, notes_table: str, *, patience: float = 10.0) -> Outcome:
    """Ask the authoritative store, on a new connection, whether the marked transaction committed."""
    if marker is None:
        return Outcome.ABORTED if store.dialect is Dialect.SQLITE else Outcome.UNKNOWN
    deadline = time.monotonic() + patience
    while True:
        try:
            answer = _ask(store, marker, notes_table)
        except Exception:  # noqa: BLE001 - the store may be unreachable for a moment: ask again
            answer = None
        if answer is not None:
            return answer
        if time.monotonic() >= deadline:
            return Outcome.UNKNOWN
        time.sleep(0.2)


def _ask(store: Store, marker: CommitMarker, notes_table: str) -> Outcome | None:
    """One question; None while the server is still finishing the transaction."""
    with store.connect() as conn:
        cur = conn.cursor()
        try:
            if marker.dialect is Dialect.POSTGRESQL:
                cur.execute("SELECT txid_status(%s)", (marker.value,))
                status = cur.fetchone()[0]
                if status == "in progress":
                    return None
                return Outcome.COMMITTED if status == "committed" else Outcome.ABORTED
            cur.execute("SET SESSION innodb_lock_wait_timeout = 5")
            # the inserting transaction holds the new row's lock until it ends: this read waits for that
            cur.execute(f"SELECT id FROM {notes_table} WHERE id = %s LOCK IN SHARE MODE", (marker.value,))
            found = cur.fetchone() is not None
            conn.rollback()
            return Outcome.COMMITTED if found else Outcome.ABORTED
        finally:
            cur.close()
