"""Backfill range planning: a string key costs about what an integer key does, and the ranges come out
about even either way (PostgreSQL, where a bytewise string order cannot use a linguistic index)."""

from __future__ import annotations

import time

from conftest import execute, fetch_all

from dualwrite.backfill_copy import plan_bounds
from dualwrite.mapping import identity_mapping
from dualwrite.sqlgen import source_side
from dualwrite.store import Store

ROWS = 800_000
RANGES = 16


def _planned(store: Store, table: str) -> tuple[float, list[int]]:
    """Seconds to plan ``RANGES`` ranges, and the rows each range holds."""
    mapping = identity_mapping(store.describe(table), store.describe(table))
    began = time.monotonic()
    bounds = plan_bounds(store, mapping, ROWS, RANGES)
    seconds = time.monotonic() - began
    side = source_side(mapping, store)
    edges = [None, *bounds, None]
    sizes = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        where, params = side.range_predicate(lo, hi)
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT COUNT(*) FROM {side.qtable} WHERE {where}", params)
            sizes.append(int(cur.fetchone()[0]))
            conn.rollback()
    return seconds, sizes


def test_string_key_planning_costs_about_what_integer_planning_does(pg_old: Store, table_name: str) -> None:
    ints, strs = f"{table_name}_i", f"{table_name}_s"
    execute(pg_old,
            f"CREATE TABLE {ints} (id bigint PRIMARY KEY, v int)",
            f"INSERT INTO {ints} SELECT g, g FROM generate_series(1, {ROWS}) g",
            f"CREATE TABLE {strs} (id char(36) PRIMARY KEY, v int)",
            f"INSERT INTO {strs} SELECT md5(g::text)::uuid::text, g FROM generate_series(1, {ROWS}) g",
            f"ANALYZE {ints}", f"ANALYZE {strs}")
    collation = fetch_all(pg_old, "SELECT datcollate FROM pg_database WHERE datname = current_database()")[0][0]
    int_seconds, int_sizes = _planned(pg_old, ints)
    str_seconds, str_sizes = _planned(pg_old, strs)
    print(f"collation {collation}: integer key {int_seconds:.2f} s, CHAR(36) key {str_seconds:.2f} s")
    for sizes in (int_sizes, str_sizes):
        assert sum(sizes) == ROWS and len(sizes) == RANGES
        assert max(sizes) < 2 * ROWS / RANGES, sizes  # about even
    assert str_seconds < max(0.75, 2 * int_seconds), (int_seconds, str_seconds)


def test_mariadb_string_key_ranges_cover_every_row_once(my_old: Store, table_name: str) -> None:
    """MariaDB orders the string key bytewise (``BINARY``) in ranges: the sampled bounds split the rows
    into ranges that together hold each row exactly once."""
    rows = 60_000
    execute(my_old, f"CREATE TABLE {table_name} (id VARCHAR(40) COLLATE utf8mb4_unicode_ci PRIMARY KEY, v INT)",
            f"INSERT INTO {table_name} SELECT UUID(), seq FROM seq_1_to_{rows}")
    mapping = identity_mapping(my_old.describe(table_name), my_old.describe(table_name))
    bounds = plan_bounds(my_old, mapping, rows, 8)
    assert len(bounds) == 7
    side = source_side(mapping, my_old)
    edges = [None, *bounds, None]
    sizes = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        where, params = side.range_predicate(lo, hi)
        sizes.append(int(fetch_all_params(my_old, f"SELECT COUNT(*) FROM {side.qtable} WHERE {where}", params)))
    assert sum(sizes) == rows and max(sizes) < 2 * rows / 8, sizes


def fetch_all_params(store: Store, sql: str, params: list[object]) -> object:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        (n,) = cur.fetchone()
        conn.rollback()
    return n
