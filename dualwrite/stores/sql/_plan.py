"""Range planning and row estimates on SQL stores: what splitting a table for parallel copies needs."""

from __future__ import annotations

import math
from collections.abc import Callable

from dualwrite import rows as rowio
from dualwrite.mapping import TableMapping
from dualwrite.sqlgen import Side, source_side
from dualwrite.store import Dialect, Store
from dualwrite.stores._kind import Key, Role
from dualwrite.stores.sql._table import SqlTable

#: range bounds are quantiles of a sample of about this many keys (one sampled scan and one small sort)
PLAN_SAMPLE_KEYS = 50_000


def plan_bounds(store: Store, mapping: TableMapping, total: int, ranges: int,
                on_bound: Callable[[int], None] | None = None) -> list[Key]:
    """Up to ``ranges - 1`` increasing source keys splitting about ``total`` rows into ranges of roughly
    equal size (``lo < key <= hi`` each).

    On PostgreSQL and MariaDB/MySQL the bounds are quantiles of a sample of about ``PLAN_SAMPLE_KEYS``
    keys (every key of a smaller table) - PostgreSQL's ``TABLESAMPLE SYSTEM``, a ``RAND()`` filter on
    MySQL - sorted once in range order. Chained ``OFFSET`` queries walk the key index instead, which is
    cheap for an integer key inserted in order but not for a random string key (a UUID as CHAR(36)):
    each index entry sends the walk to a random heap page, and a bytewise order under a linguistic
    collation (``COLLATE "C"``) cannot use the index at all, so every boundary sorted the whole table
    (~20 s for a few million keys). Ranges only need to be roughly even. SQLite, and a sample smaller
    than ``ranges``, use the offset walk."""
    if ranges <= 1 or total <= 0:
        return []
    if store.dialect in (Dialect.POSTGRESQL, Dialect.MYSQL):
        sample = _sample_keys(store, source_side(mapping, store), total)
        if len(sample) >= ranges:
            bounds: list[Key] = []
            for j in range(1, ranges):
                key = sample[len(sample) * j // ranges]
                if not bounds or key != bounds[-1]:
                    bounds.append(key)
                    if on_bound is not None:
                        on_bound(len(bounds))
            return bounds
    return _walk_bounds(store, mapping, math.ceil(total / ranges), ranges - 1, on_bound)


def _walk_bounds(store: Store, mapping: TableMapping, step: int, most: int,
                 on_bound: Callable[[int], None] | None) -> list[Key]:
    table = SqlTable(store, mapping, Role.SOURCE)
    out: list[Key] = []
    lo: Key | None = None
    with store.connect() as conn:
        for _ in range(most):
            found = table.nth_key(conn, lo, None, step - 1)
            if found is None:
                break
            lo = found
            out.append(lo)
            if on_bound is not None:
                on_bound(len(out))
        conn.rollback()
    return out


def _sample_keys(store: Store, side: Side, total: int) -> list[Key]:
    """About ``PLAN_SAMPLE_KEYS`` keys of the table (all of a smaller one), sorted in range order."""
    fraction = min(1.0, PLAN_SAMPLE_KEYS / max(1, total))
    source, where = side.qtable, ""
    if fraction < 1.0 and store.dialect is Dialect.POSTGRESQL:
        source = f"{side.qtable} TABLESAMPLE SYSTEM ({fraction * 100:.6f})"
    elif fraction < 1.0 and store.dialect is Dialect.MYSQL:
        where = f" WHERE RAND() < {fraction:.8f}"
    sql = f"SELECT {side.key_list()} FROM {source}{where} ORDER BY {side.order_by()}"
    with store.connect() as conn:
        keys = [tuple(r) for r in rowio.fetch(conn, sql, [])]
        conn.rollback()
    return keys


def row_estimate(store: Store, table: str) -> int | None:
    """The catalog's row estimate (PostgreSQL ``reltuples``, MariaDB ``TABLE_ROWS``), or None (SQLite,
    a table never analysed)."""
    if store.dialect is Dialect.SQLITE:
        return None
    with store.connect() as conn:
        cur = conn.cursor()
        if store.dialect is Dialect.POSTGRESQL:
            cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (store.quote(table),))
        else:
            schema, _, name = table.rpartition(".")
            cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                        "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
        row = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None
