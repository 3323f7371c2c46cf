"""CLEANUP's work on the stores: retire the old tables, empty what the migration kept beside them.

Every step is idempotent, because the activity running them is retried: a retry finds the retired names and
reports them, finds the key logs already dropped, the repair queue already empty."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import NoSuchTableError

from dualwrite import control
from dualwrite.errors import RetireError
from dualwrite.retired import retired_name
from dualwrite.store import Dialect, Store

__all__ = ["Retired", "discard_repairs", "drop_log_if_unused", "retire_table", "retired_name", "table_exists"]

log = logging.getLogger("dualwrite.retire")


@dataclass(frozen=True)
class Retired:
    """What became of one old table: ``renamed`` / ``dropped``, or ``already-...`` on a retry."""

    source: str
    action: str
    retired_as: str | None = None


def table_exists(store: Store, table: str) -> bool:
    try:
        store.describe(table, refresh=True)
    except NoSuchTableError:
        return False
    return True


def retire_table(store: Store, table: str, stamp: str, *, drop: bool) -> Retired:
    """Rename (or drop) one old table; on a retry report what the first attempt did."""
    new_name = retired_name(table, stamp)
    if not table_exists(store, table):
        if drop:
            return Retired(source=table, action="already-dropped")
        if table_exists(store, new_name):
            return Retired(source=table, action="already-renamed", retired_as=new_name)
        raise RetireError(f"old table {table} is gone and no {new_name} exists: it was not retired by this "
                          "migration")
    bare = new_name.rpartition(".")[2]
    if drop:
        sql = f"DROP TABLE {store.quote(table)}"
    elif store.dialect is Dialect.MYSQL:
        sql = f"RENAME TABLE {store.quote(table)} TO {store.quote(new_name)}"
    else:
        sql = f"ALTER TABLE {store.quote(table)} RENAME TO {store.quote(bare)}"
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        cur.close()
        conn.commit()
    log.info("retired old table %s of store %s: %s", table, store.name, "dropped" if drop else f"renamed to {new_name}")
    return Retired(source=table, action="dropped" if drop else "renamed", retired_as=None if drop else new_name)


def drop_log_if_unused(store: Store, migration: str, log_table: str) -> bool:
    """Delete this migration's key-log entries; drop the log when no other migration uses it."""
    if not table_exists(store, log_table):
        return False
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {log_table} WHERE migration = {p}", (migration,))
        cur.execute(f"SELECT COUNT(*) FROM {log_table}")
        (left,) = cur.fetchone()
        if not left:
            cur.execute(f"DROP TABLE {log_table}")
        cur.close()
        conn.commit()
    return not left


def discard_repairs(store: Store, migration: str) -> int:
    """Keys queued to be mirrored into a store that is now retired: nothing left to do for them."""
    return delete_migration_rows(store, control.REPAIR_QUEUE, migration)


def delete_migration_rows(store: Store, table: str, migration: str) -> int:
    """Delete ``migration``'s rows of a bookkeeping table (absent table: nothing to delete)."""
    if not table_exists(store, table):
        return 0
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {table} WHERE migration = {store.paramstyle}", (migration,))
        n = int(cur.rowcount or 0)
        cur.close()
        conn.commit()
    return n
