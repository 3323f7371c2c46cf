"""MariaDB binlog capture (strategy ``cdc``): row events read with mysql-replication, keys mirrored.

An application writes raw SQL to the old MariaDB; what reaches the new PostgreSQL store comes only from the
binlog, so equal tables prove every key was found, and the position is checkpointed only after the keys
were applied (a read without a checkpoint is read again).
"""

from __future__ import annotations

from conftest import execute, fetch_all

from dualwrite import control
from dualwrite.cdc import binlog, capture
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


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
