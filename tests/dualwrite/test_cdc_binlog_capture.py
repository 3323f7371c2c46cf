"""MariaDB binlog capture (strategy ``cdc``): row events read with mysql-replication, keys mirrored.

An application writes raw SQL to the old MariaDB; what reaches the new PostgreSQL store comes only from the
binlog, so equal tables prove every key was found, and the position is checkpointed only after the keys
were applied (a read without a checkpoint is read again).
"""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
from conftest import execute, fetch_all

from dualwrite import control
from dualwrite.cdc import binlog, capture
from dualwrite.cdc.binlog_stream import ResumingStream
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import identity_mapping
from dualwrite.store import Kind, Store


def _rows(store: Store, table: str) -> list[tuple[object, ...]]:
    return [(int(r[0]), str(r[1])) for r in fetch_all(store, f"SELECT id, name FROM {table} ORDER BY id")]


def test_binlog_changes_reach_the_new_store(cdc_my_old: Store, pg_new: Store, table_name: str) -> None:
    execute(cdc_my_old, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, "
                        "note TEXT)")
    execute(pg_new, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL, note text)")
    control.ensure_schema(cdc_my_old)
    migration = f"b-{table_name[-4:]}"
    execute(cdc_my_old, f"INSERT INTO {table_name} VALUES (1, 'before capture', NULL)")
    assert capture.setup(cdc_my_old, cdc_my_old, migration, [table_name])
    assert not capture.setup(cdc_my_old, cdc_my_old, migration, [table_name]), "setup is idempotent"
    execute(pg_new, f"INSERT INTO {table_name} VALUES (1, 'before capture', NULL)")  # the backfill's copy
    mapping = identity_mapping(cdc_my_old.describe(table_name, refresh=True), pg_new.describe(table_name, refresh=True))
    tk = [TableKeys(table_name, ["id"], list(mapping.key_kinds))]
    with cdc_my_old.connect() as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {table_name} VALUES (%s, %s, NULL)", [(i, f"n{i}") for i in range(2, 400)])
        conn.commit()
    execute(cdc_my_old, f"UPDATE {table_name} SET name = 'upd' WHERE id % 7 = 0",
            f"UPDATE {table_name} SET id = id + 1000 WHERE id IN (3, 250)",
            f"DELETE FROM {table_name} WHERE id % 10 = 1",
            "CREATE TABLE other_not_migrated (x INT PRIMARY KEY)", "INSERT INTO other_not_migrated VALUES (1)")
    first = binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk, limit=10)
    again = binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk, limit=10)
    assert first.keys == again.keys and first.changes > 0, "nothing is consumed before it is applied"
    total = 0
    while True:
        res = capture.drain_batch(cdc_my_old, pg_new, cdc_my_old, migration, tk, lambda _t: mapping, reverse=False,
                                  limit=100)
        if not res.entries:
            break
        total += res.entries
    assert total >= 400
    assert _rows(pg_new, table_name) == _rows(cdc_my_old, table_name)
    assert binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk).changes == 0
    capture.teardown(cdc_my_old, cdc_my_old, migration)
    assert binlog.load_position(cdc_my_old, migration, cdc_my_old) is None


def _one_row_transactions(store: Store, table: str, inserts: int, deletes: int) -> Counter[tuple[object, ...]]:
    """``inserts`` rows and then ``deletes`` of them, each statement its own transaction; the keys a reader
    must return, as many times as each was written."""
    execute(store, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL)")
    with store.connect() as conn:
        cur = conn.cursor()
        for i in range(inserts):
            cur.execute(f"INSERT INTO {table} VALUES (%s, 'x')", (i,))
            conn.commit()
        for i in range(deletes):
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (i,))
            conn.commit()
    return Counter([(i,) for i in range(inserts)] + [(i,) for i in range(deletes)])


def _capture(store: Store, table: str) -> tuple[str, list[TableKeys]]:
    control.ensure_schema(store)
    migration = f"b-{table[-4:]}"
    assert binlog.setup(store, migration, store)
    return migration, [TableKeys(table, ["id"], [Kind.INT])]


def test_a_large_read_returns_each_transaction_once_at_the_cost_of_the_new_ones(
        cdc_my_old: Store, table_name: str) -> None:
    # [T2-4]: the library's MariaDB dump request was one byte short, the server reset the connection every
    # few hundred transactions, and each reconnect started again at the first position: 20,000 keys of
    # which ~500 distinct, in seconds
    execute(cdc_my_old, f"CREATE TABLE {table_name}_x (id INT PRIMARY KEY)")  # a session binlog not empty
    migration, tk = _capture(cdc_my_old, table_name)
    expected = _one_row_transactions(cdc_my_old, table_name, 2500, 500)
    t0 = time.monotonic()
    batch = binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk, limit=20_000)
    took = time.monotonic() - t0
    assert Counter(batch.keys[table_name]) == expected
    assert batch.changes == 3000
    assert took < 6.0, f"a read of 3,000 transactions took {took:.1f} s"
    assert batch.end is not None
    binlog.save_position(cdc_my_old, migration, cdc_my_old, batch.end)
    t0 = time.monotonic()
    assert binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk, limit=20_000).changes == 0
    assert time.monotonic() - t0 < 2.0, "a read from the end costs what nothing new warrants"


def test_a_dump_connection_lost_mid_read_resumes_after_the_last_whole_transaction(
        cdc_my_old: Store, table_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migration, tk = _capture(cdc_my_old, table_name)
    expected = _one_row_transactions(cdc_my_old, table_name, 1500, 0)
    connections: list[int] = []
    fetchone = ResumingStream.fetchone
    events = 0

    def breaking_fetchone(self: ResumingStream) -> object:
        # the connection is cut every 700 events (mid-transaction as it falls): the library reconnects
        nonlocal events
        events += 1
        if events % 700 == 0 and self._stream_connection._sock is not None:
            self._stream_connection._sock.shutdown(socket.SHUT_RDWR)
        connections.append(self.connections)
        return fetchone(self)

    monkeypatch.setattr(ResumingStream, "fetchone", breaking_fetchone)
    batch = binlog.read_batch(cdc_my_old, migration, cdc_my_old, tk, limit=20_000)
    assert max(connections) >= 3, "the connection was cut and re-opened"
    assert Counter(batch.keys[table_name]) == expected
    assert batch.changes == 1500
    assert batch.end is not None and binlog.gtid_reached(batch.end[1], binlog.current_position(cdc_my_old)[1])
