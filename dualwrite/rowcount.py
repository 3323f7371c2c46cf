"""How many rows a table holds, cheaply: the one home of dualwrite's row estimates.

An exact ``COUNT(*)`` of a billion rows takes minutes; the catalogs keep an estimate for free (PostgreSQL's
``pg_class.reltuples``, MySQL's ``information_schema.TABLES.TABLE_ROWS``). Big tables take the catalog's word;
tables the catalog calls small (or does not know) are counted, because an estimate of a small or freshly
loaded table can be far off. One threshold, :data:`EXACT_COUNT_LIMIT`, for the preflight's summary and the
backfill's range plan alike.
"""

from __future__ import annotations

from typing import Any

from dualwrite.store import Dialect, Store

__all__ = ["EXACT_COUNT_LIMIT", "catalog_estimate", "count_rows", "estimate_rows"]

EXACT_COUNT_LIMIT = 100_000
"""Tables the catalog estimates at or below this many rows (or not at all) are counted."""


def catalog_estimate(cur: Any, store: Store, table: str) -> int | None:
    """The catalog's row estimate of ``table`` through an open cursor (None: the engine keeps none, or
    the table was never analyzed)."""
    row: Any = None
    if store.dialect is Dialect.POSTGRESQL:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (store.quote(table),))
        row = cur.fetchone()
    elif store.dialect is Dialect.MYSQL:
        schema, _, name = table.rpartition(".")
        cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                    "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
        row = cur.fetchone()
    if not row or row[0] is None or int(row[0]) < 0:  # PostgreSQL 14+: -1 for a table never analyzed
        return None
    return int(row[0])


def count_rows(store: Store, table: str) -> int:
    """An exact count (a full scan: only for tables known to be small, or where nothing else will do)."""
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {store.quote(table)}")
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n)


def estimate_rows(store: Store, table: str) -> int:
    """The catalog's estimate above :data:`EXACT_COUNT_LIMIT`, an exact count otherwise. For a plan that
    needs a number (the backfill's ranges only need to be roughly even), never a bound."""
    with store.connect() as conn:
        cur = conn.cursor()
        estimate = catalog_estimate(cur, store, table)
        cur.close()
        conn.rollback()
    return estimate if estimate is not None and estimate > EXACT_COUNT_LIMIT else count_rows(store, table)
