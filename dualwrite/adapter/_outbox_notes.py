"""Noting written keys in the outbox inside the authoritative transaction (methods with ``notes_keys``).

The note commits or rolls back with the rows it names, and the relay mirrors the keys afterwards. On
PostgreSQL a statement of the Core API carries its note itself (:func:`fold`: one round trip, one note per
row the statement returned); everything else is appended before the commit in one statement
(:func:`append_statement`), by the unit of work and by the ORM's flush capture alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dualwrite import outbox
from dualwrite.adapter._tables import Key, SideTable
from dualwrite.mirror import normal_key
from dualwrite.store import Store

__all__ = ["append_statement", "fold", "fold_params"]


def fold(side: SideTable, sql: str) -> str:
    """``sql`` (a DML statement on ``side``, PostgreSQL) with its outbox note folded in (cached per side)."""
    cached = side.sql.get(("cte", sql))
    if cached is None:
        cached = side.sql[("cte", sql)] = outbox.pg_cte_sql(f"{sql} RETURNING 1")
    return cached


def fold_params(migration: str, table: str, key: Key) -> list[Any]:
    """The parameters :func:`fold` adds after the statement's own."""
    return [migration, table, outbox.key_json(key)]


def append_statement(store: Store, migration: str, notes: Iterable[tuple[str, Key]]) -> tuple[str, Any] | None:
    """(SQL, parameters) appending the notes of (table, key) pairs to ``store``'s outbox, each key once, for
    ``exec_driver_sql`` (a list of rows runs as executemany); None when there is nothing to note."""
    rows = list(dict.fromkeys((migration, table, outbox.key_json(normal_key(k))) for table, k in notes))
    if not rows:
        return None
    return outbox.append_sql(store), rows if len(rows) > 1 else rows[0]
