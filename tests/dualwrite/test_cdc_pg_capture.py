"""PostgreSQL log capture (strategy ``cdc``): a ``pgoutput`` slot read through SQL, keys mirrored.

An application writes raw SQL to the old store; what reaches the new store comes only from the slot, so
equal tables prove the decoder found every key (inserts, updates, updates that move the key, deletes,
composite and text keys) and that the slot moves only after the keys were applied.
"""

from __future__ import annotations

from conftest import execute, fetch_all

from dualwrite.cdc import capture, pg
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


def _drain(old: Store, new: Store, migration: str, table: str, key: list[str]) -> int:
    mapping = identity_mapping(old.describe(table, refresh=True), new.describe(table, refresh=True))
    tk = [TableKeys(table, key, list(mapping.key_kinds))]
    total = 0
    while True:
        res = capture.drain_batch(old, new, old, migration, tk, lambda _t: mapping, reverse=False, limit=50)
        if not res.entries:
            return total
        total += res.entries


def _rows(store: Store, table: str) -> list[tuple[object, ...]]:
    return fetch_all(store, f"SELECT * FROM {table} ORDER BY 1, 2")


def test_slot_changes_reach_the_new_store(cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL, note text)"
    execute(cdc_pg_old, ddl, f"INSERT INTO {table_name} SELECT g, 'before-' || g, NULL FROM generate_series(1, 20) g")
    execute(cdc_pg_new, ddl)
    migration = f"m-{table_name[-4:]}"
    assert capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    assert not capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name]), "setup is idempotent"
    try:
        # rows from before capture started are the backfill's; copy them like it does
        execute(cdc_pg_new, f"INSERT INTO {table_name} SELECT g, 'before-' || g, NULL FROM generate_series(1, 20) g")
        execute(cdc_pg_old,
                f"INSERT INTO {table_name} SELECT g, 'new-' || g, repeat('x', 5000) FROM generate_series(21, 300) g",
                f"UPDATE {table_name} SET name = 'upd' WHERE id % 7 = 0",
                f"UPDATE {table_name} SET id = id + 1000 WHERE id IN (3, 250)",  # the key moves: 'K' tuple
                f"DELETE FROM {table_name} WHERE id % 10 = 1",
                f"UPDATE {table_name} SET note = 'toast stays' WHERE id = 22")  # unchanged TOAST column
        # a peek consumes nothing: until the keys are applied, the same batch is read again
        tk = [TableKeys(table_name, ["id"], list(identity_mapping(cdc_pg_old.describe(table_name),
                                                                cdc_pg_new.describe(table_name)).key_kinds))]
        first = pg.read_batch(cdc_pg_old, migration, tk, limit=10)
        again = pg.read_batch(cdc_pg_old, migration, tk, limit=10)
        assert first.keys == again.keys and first.changes > 0
        assert _drain(cdc_pg_old, cdc_pg_new, migration, table_name, ["id"]) >= 300
        assert _rows(cdc_pg_new, table_name) == _rows(cdc_pg_old, table_name)
        assert pg.read_batch(cdc_pg_old, migration, tk).changes == 0, "the slot advanced past what was applied"
        # the slot's autocommit sessions go back to the pool in transaction mode (the copy's temporary table
        # is ON COMMIT DELETE ROWS: in autocommit its rows vanished and the backfill silently copied nothing)
        for _ in range(3):
            with cdc_pg_old.connect() as conn:
                assert getattr(conn, "driver_connection", conn).autocommit is False
        lag = pg.lag(cdc_pg_old, migration)
        assert lag is not None
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)
    assert not pg.slot_exists(cdc_pg_old, migration)


def test_composite_text_keys(cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    ddl = (f"CREATE TABLE {table_name} (tenant text, id uuid, at timestamptz, v int, "
           "PRIMARY KEY (tenant, id, at))")
    execute(cdc_pg_old, ddl)
    execute(cdc_pg_new, ddl)
    migration = f"c-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        execute(cdc_pg_old,
                f"INSERT INTO {table_name} SELECT 'ten ''' || (g % 3), gen_random_uuid(), "
                "timestamptz '2024-05-01 10:00:00.123456+02' + g * interval '1 second', g "
                "FROM generate_series(1, 60) g",
                f"UPDATE {table_name} SET v = -v WHERE v % 4 = 0",
                f"DELETE FROM {table_name} WHERE v % 5 = 0")
        _drain(cdc_pg_old, cdc_pg_new, migration, table_name, ["tenant", "id", "at"])
        assert _rows(cdc_pg_new, table_name) == _rows(cdc_pg_old, table_name)
        assert len(_rows(cdc_pg_new, table_name)) == 48
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_the_slot_advances_while_only_other_tables_change(cdc_pg_old: Store, cdc_pg_new: Store,
                                                          table_name: str) -> None:
    """A slot that nothing advances holds WAL back until the disk fills (the most reported failure of log
    capture): when the migrated tables are quiet and others are busy, reading the slot moves it anyway."""
    execute(cdc_pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY)",
            f"CREATE TABLE {table_name}_busy (id bigint PRIMARY KEY, pad text)")
    execute(cdc_pg_new, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY)")
    migration = f"i-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        execute(cdc_pg_old, f"INSERT INTO {table_name}_busy SELECT g, repeat('x', 200) "
                            "FROM generate_series(1, 20000) g")
        before = pg.lag(cdc_pg_old, migration)
        assert before is not None and before[0] > 1_000_000, before
        assert _drain(cdc_pg_old, cdc_pg_new, migration, table_name, ["id"]) == 0
        after = pg.lag(cdc_pg_old, migration)
        assert after is not None and after[0] < 100_000, (before, after)
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_setup_again_with_another_table_set_captures_it(cdc_pg_old: Store, cdc_pg_new: Store,
                                                        table_name: str) -> None:
    a, b = f"{table_name}_a", f"{table_name}_b"
    for store in (cdc_pg_old, cdc_pg_new):
        execute(store, f"CREATE TABLE {a} (id bigint PRIMARY KEY)", f"CREATE TABLE {b} (id bigint PRIMARY KEY)")
    migration = f"s-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [a])
    try:
        assert not capture.setup(cdc_pg_old, cdc_pg_old, migration, [a])  # unchanged: nothing altered
        capture.setup(cdc_pg_old, cdc_pg_old, migration, [a, b])
        execute(cdc_pg_old, f"INSERT INTO {a} VALUES (1)", f"INSERT INTO {b} VALUES (2)")
        kinds = list(identity_mapping(cdc_pg_old.describe(a), cdc_pg_new.describe(a)).key_kinds)
        found = pg.read_batch(cdc_pg_old, migration, [TableKeys(a, ["id"], kinds), TableKeys(b, ["id"], kinds)])
        assert found.keys == {a: [(1,)], b: [(2,)]}
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_retained_wal_past_the_threshold_is_a_warning_with_advice(cdc_pg_old: Store, table_name: str) -> None:
    execute(cdc_pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, pad text)")
    migration = f"w-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        assert capture.retention_warning(cdc_pg_old, cdc_pg_old, migration, threshold_bytes=1_000_000) is None
        execute(cdc_pg_old, f"INSERT INTO {table_name} SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        text = capture.retention_warning(cdc_pg_old, cdc_pg_old, migration, threshold_bytes=1_000_000)
        assert text is not None and "holds back" in text and "max_slot_wal_keep_size" in text, text
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_a_read_cut_off_at_its_limit_never_moves_the_slot_past_what_it_did_not_decode(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    """The peek's limit counts messages (BEGIN, INSERT, COMMIT: three per one-row transaction), not changes:
    a batch that stopped at the limit with fewer changes than the limit is not the end of the WAL. Taking it
    for the end advanced the slot past committed transactions (chaos pg-pg cdc: 3,067 acknowledged writes
    lost)."""
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL)"
    execute(cdc_pg_old, ddl)
    execute(cdc_pg_new, ddl)
    migration = f"m-{table_name[-4:]}"
    assert capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        with cdc_pg_old.connect() as conn:
            for i in range(1, 601):
                conn.cursor().execute(f"INSERT INTO {table_name} VALUES ({i}, 'one-row transaction {i}')")
                conn.commit()
        kinds = list(identity_mapping(cdc_pg_old.describe(table_name), cdc_pg_new.describe(table_name)).key_kinds)
        cut = pg.read_batch(cdc_pg_old, migration, [TableKeys(table_name, ["id"], kinds)], limit=900)
        assert 0 < cut.changes < 600
        assert cut.idle_lsn is None, "a read cut off at its limit claimed to have seen all the WAL"
        _drain(cdc_pg_old, cdc_pg_new, migration, table_name, ["id"])
        assert len(_rows(cdc_pg_new, table_name)) == 600
        assert _rows(cdc_pg_new, table_name) == _rows(cdc_pg_old, table_name)
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_concurrent_setups_of_one_migration_both_succeed(cdc_pg_old: Store, table_name: str) -> None:
    """The relay's setup and the write denial's run at once at PREPARE; the loser of CREATE PUBLICATION's
    race saw a unique violation and failed the migration's PREPARE (seen in CI)."""
    import threading

    execute(cdc_pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY)")
    errors: list[BaseException] = []
    for round_ in range(4):
        migration = f"race{round_}-{table_name[-4:]}"
        barrier = threading.Barrier(6)

        def one(migration: str = migration, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
            except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)
    assert errors == []
