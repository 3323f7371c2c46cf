"""[T2-4] Capture that lost changes says so, and keeps saying so until a verification repaired the stores.

A replication slot that vanished after capture had started (dropped by hand, invalidated by
``max_slot_wal_keep_size``) or a binlog purged past the stored position means changes were never seen: the
stores differ in ways no relay can find. A TRUNCATE in the stream is not mirrored either. The relay's
drain fails with the reason, and the migration's control store keeps a mark that status shows.
"""

from __future__ import annotations

import time

import pytest
from conftest import execute, fetch_all

from dualwrite import control
from dualwrite.cdc import capture
from dualwrite.cdc.pg import TableKeys
from dualwrite.errors import CaptureLostError, CaptureTruncatedError
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


def _drain(old: Store, new: Store, migration: str, table: str) -> int:
    mapping = identity_mapping(old.describe(table, refresh=True), new.describe(table, refresh=True))
    tk = [TableKeys(table, ["id"], list(mapping.key_kinds))]
    return capture.drain_batch(old, new, old, migration, tk, lambda _t: mapping, reverse=False).entries


def test_a_slot_dropped_after_capture_started_is_reported_as_lost_changes(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    control.ensure_schema(cdc_pg_old)
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)"
    execute(cdc_pg_old, ddl)
    execute(cdc_pg_new, ddl)
    migration = f"lost-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        slot, _ = capture.pg.capture_names(migration, cdc_pg_old.name)
        execute(cdc_pg_old, f"SELECT pg_drop_replication_slot('{slot}')")  # by hand, or invalidated
        execute(cdc_pg_old, f"INSERT INTO {table_name} VALUES (1, 'never seen')")
        with pytest.raises(CaptureLostError, match="lost changes.*verification with repair"):
            _drain(cdc_pg_old, cdc_pg_new, migration, table_name)
        assert [m for m in capture.losses(cdc_pg_old, migration, [cdc_pg_old]) if "slot" in m]
        # the relay's restart sets the slot up again; the mark stays until a repairing verification
        capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
        assert _drain(cdc_pg_old, cdc_pg_new, migration, table_name) == 0
        assert capture.losses(cdc_pg_old, migration, [cdc_pg_old])
        capture.clear_losses(cdc_pg_old, migration, [cdc_pg_old])
        assert capture.losses(cdc_pg_old, migration, [cdc_pg_old]) == []
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


def test_a_truncate_in_the_stream_is_reported_after_the_rest_was_applied(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    control.ensure_schema(cdc_pg_old)
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)"
    execute(cdc_pg_old, ddl)
    execute(cdc_pg_new, ddl)
    migration = f"trunc-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    try:
        execute(cdc_pg_old, f"INSERT INTO {table_name} VALUES (1, 'a')", f"TRUNCATE {table_name}",
                f"INSERT INTO {table_name} VALUES (2, 'b')")
        with pytest.raises(CaptureTruncatedError, match=f"TRUNCATE of {table_name}"):
            _drain(cdc_pg_old, cdc_pg_new, migration, table_name)
        assert fetch_all(cdc_pg_new, f"SELECT id FROM {table_name} ORDER BY 1") == [(2,)]
        assert _drain(cdc_pg_old, cdc_pg_new, migration, table_name) == 0, "the position moved past it"
        assert [m for m in capture.losses(cdc_pg_old, migration, [cdc_pg_old]) if "TRUNCATE" in m]
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)


@pytest.mark.parametrize("statement", ["TRUNCATE {t}", "truncate table `{t}`"])
def test_a_truncate_in_the_binlog_is_reported_after_the_rest_was_applied(
        cdc_my_old: Store, cdc_pg_new: Store, table_name: str, statement: str) -> None:
    """MariaDB logs a TRUNCATE as a statement (a QueryEvent, no row events even with a ROW binlog): capture
    that only read rows events saw nothing, and the new store kept every truncated row."""
    control.ensure_schema(cdc_pg_new)
    execute(cdc_my_old, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, name VARCHAR(20))")
    execute(cdc_pg_new, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)")
    migration = f"btrunc-{table_name[-4:]}"
    capture.setup(cdc_my_old, cdc_pg_new, migration, [table_name])
    try:
        mapping = identity_mapping(cdc_my_old.describe(table_name, refresh=True),
                                   cdc_pg_new.describe(table_name, refresh=True))
        tk = [TableKeys(table_name, ["id"], list(mapping.key_kinds))]

        def drain() -> int:
            return capture.drain_batch(cdc_my_old, cdc_pg_new, cdc_pg_new, migration, tk, lambda _t: mapping,
                                       reverse=False).entries

        execute(cdc_my_old, f"INSERT INTO {table_name} VALUES (1, 'a')", statement.format(t=table_name),
                f"INSERT INTO {table_name} VALUES (2, 'b')")
        with pytest.raises(CaptureTruncatedError, match=f"TRUNCATE of {table_name}"):
            while drain():  # the insert before the TRUNCATE may come in a batch of its own
                pass
        while drain():
            pass
        assert fetch_all(cdc_pg_new, f"SELECT id FROM {table_name} ORDER BY 1") in ([(1,), (2,)], [(2,)])
        assert drain() == 0, "the position moved past it"
        assert [m for m in capture.losses(cdc_pg_new, migration, [cdc_my_old]) if "TRUNCATE" in m]
    finally:
        capture.teardown(cdc_my_old, cdc_pg_new, migration)


@pytest.mark.parametrize("statement", ["ALTER TABLE {t} TRUNCATE PARTITION p0", "alter table `{t}` drop partition p0"])
def test_a_partition_emptied_in_the_binlog_is_reported(cdc_my_old: Store, cdc_pg_new: Store, table_name: str,
                                                       statement: str) -> None:
    """``ALTER TABLE ... TRUNCATE / DROP PARTITION`` empties rows of a partitioned table as one logged
    statement, like TRUNCATE: capture that only knew TRUNCATE saw nothing, and the new store kept the rows."""
    control.ensure_schema(cdc_pg_new)
    execute(cdc_my_old, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, name VARCHAR(20)) PARTITION BY RANGE (id) "
                        "(PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN MAXVALUE)")
    execute(cdc_pg_new, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)")
    migration = f"bpart-{table_name[-4:]}"
    capture.setup(cdc_my_old, cdc_pg_new, migration, [table_name])
    try:
        mapping = identity_mapping(cdc_my_old.describe(table_name, refresh=True),
                                   cdc_pg_new.describe(table_name, refresh=True))
        tk = [TableKeys(table_name, ["id"], list(mapping.key_kinds))]

        def drain() -> int:
            return capture.drain_batch(cdc_my_old, cdc_pg_new, cdc_pg_new, migration, tk, lambda _t: mapping,
                                       reverse=False).entries

        execute(cdc_my_old, f"INSERT INTO {table_name} VALUES (1, 'a'), (200, 'b')")
        while drain():
            pass
        execute(cdc_my_old, statement.format(t=table_name))
        with pytest.raises(CaptureTruncatedError, match=table_name):
            for _ in range(10):
                drain()
        assert [m for m in capture.losses(cdc_pg_new, migration, [cdc_my_old]) if table_name in m]
    finally:
        capture.teardown(cdc_my_old, cdc_pg_new, migration)


def test_a_binlog_purged_past_the_stored_position_is_reported_as_lost_changes(
        cdc_my_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    control.ensure_schema(cdc_pg_new)
    execute(cdc_my_old, f"CREATE TABLE {table_name} (id BIGINT PRIMARY KEY, name VARCHAR(20))")
    execute(cdc_pg_new, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)")
    migration = f"purged-{table_name[-4:]}"
    capture.setup(cdc_my_old, cdc_pg_new, migration, [table_name])
    try:
        execute(cdc_my_old, f"INSERT INTO {table_name} VALUES (1, 'never seen')", "FLUSH BINARY LOGS")
        (last,) = fetch_all(cdc_my_old, "SHOW BINARY LOGS")[-1][:1]
        deadline = time.monotonic() + 15
        while len(fetch_all(cdc_my_old, "SHOW BINARY LOGS")) > 1:  # MariaDB purges once its checkpoint moved on
            assert time.monotonic() < deadline, "the binlog could not be purged"
            execute(cdc_my_old, f"PURGE BINARY LOGS TO '{last}'")
            time.sleep(0.1)
        mapping = identity_mapping(cdc_my_old.describe(table_name, refresh=True),
                                   cdc_pg_new.describe(table_name, refresh=True))
        tk = [TableKeys(table_name, ["id"], list(mapping.key_kinds))]
        with pytest.raises(CaptureLostError, match="lost changes"):
            capture.drain_batch(cdc_my_old, cdc_pg_new, cdc_pg_new, migration, tk, lambda _t: mapping,
                                reverse=False)
        assert capture.losses(cdc_pg_new, migration, [cdc_my_old])
    finally:
        capture.teardown(cdc_my_old, cdc_pg_new, migration)


def test_the_relay_round_notes_the_loss_starts_capture_again_and_status_shows_it(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    from conftest import create_pg, spec_for

    from dualwrite.capture.cdc_side import CdcSide
    from dualwrite.capture.store_side import RelayStores

    control.ensure_schema(cdc_pg_old)
    create_pg(cdc_pg_old, table_name, 5)
    create_pg(cdc_pg_new, table_name, 5)
    forward = identity_mapping(cdc_pg_old.describe(table_name, refresh=True),
                               cdc_pg_new.describe(table_name, refresh=True))
    back = identity_mapping(cdc_pg_new.describe(table_name), cdc_pg_old.describe(table_name))
    name = f"lostside-{table_name[-4:]}"
    rs = RelayStores(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc"), cdc_pg_old, cdc_pg_new,
                     cdc_pg_old, lambda _t, reverse: back if reverse else forward)
    side = CdcSide()
    side.setup(rs)
    try:
        slot, _ = capture.pg.capture_names(name, cdc_pg_old.name)
        execute(cdc_pg_old, f"SELECT pg_drop_replication_slot('{slot}')")
        execute(cdc_pg_old, f"UPDATE {table_name} SET name = 'lost' WHERE id = 1")
        side.drain_round(rs, "PREPARE", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
        assert capture.pg.slot_exists(cdc_pg_old, name), "capture started again from the end of the log"
        execute(cdc_pg_old, f"UPDATE {table_name} SET name = 'seen' WHERE id = 2")
        side.drain_round(rs, "PREPARE", limit=100, max_seconds=1, stats=None, should_stop=lambda: False)
        assert fetch_all(cdc_pg_new, f"SELECT name FROM {table_name} WHERE id = 2") == [("seen",)]
        lost = side.backlog(rs).lost
        assert len(lost) == 1 and "lost changes" in lost[0] and "verification with repair" in lost[0], lost
    finally:
        side.teardown(rs)
        capture.reopen(cdc_pg_old, name)


def test_cutover_gates_want_a_repairing_verification_after_the_loss() -> None:
    """Until a clean verification with repair ran after the newest loss, a gate into cutover fails and says
    why; one from before the loss, a failed one or one without repair does not count."""
    from datetime import UTC, datetime, timedelta

    from dualwrite.cdc.gate import capture_lost_metric

    lost_at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    lost = [("store 'old': capture of migration 'm' lost changes: the replication slot vanished", lost_at.timestamp())]
    assert capture_lost_metric([], None, False, False) is None
    after, before = lost_at + timedelta(minutes=1), lost_at - timedelta(minutes=1)
    for at, ok, repairing in ((None, False, False), (before, True, True), (after, False, True), (after, True, False)):
        m = capture_lost_metric(lost, at, ok, repairing)
        assert m is not None and not m.ok and "run a verification with repair first" in m.detail
        assert "replication slot vanished" in m.detail
    m = capture_lost_metric(lost, after, True, True)
    assert m is not None and m.ok


@pytest.mark.parametrize("query, expected", [
    ("TRUNCATE t1", ["t1"]), ("truncate table `t1`", ["t1"]), ("TRUNCATE TABLE db.t1;", ["db.t1"]),
    ("/* app */ TRUNCATE `d``b`.`t.1`", ["d`b.t.1"]), ("TRUNCATE TABLE t1 /* why */", ["t1"]),
    ("DELETE FROM t1", []), ("CREATE TABLE truncate_log (id int)", []), ("COMMIT", []),
    ("ALTER TABLE t1 TRUNCATE PARTITION p0, p1", ["t1"]), ("alter online table `db`.`t1` drop partition p0", ["db.t1"]),
    ("ALTER TABLE t1 EXCHANGE PARTITION p0 WITH TABLE db.t2", ["t1", "db.t2"]),
    ("ALTER TABLE t1 REORGANIZE PARTITION p0 INTO (PARTITION p1 VALUES LESS THAN (5))", []),
    ("ALTER TABLE t1 REMOVE PARTITIONING", []), ("ALTER TABLE t1 ADD COLUMN c int", [])])
def test_binlog_truncate_statements_are_recognised(query: str, expected: list[str]) -> None:
    from dualwrite.cdc.binlog import truncated_tables

    assert truncated_tables(query) == expected


def test_clearing_up_to_the_sequence_at_the_start_keeps_every_loss_noted_since(cdc_pg_old: Store,
                                                                              table_name: str) -> None:
    """One counter in the control store, no clock: a loss noted after the verification read the sequence is
    kept, also by a later clear with that older reading (the sequence never restarts after a clear)."""
    control.ensure_schema(cdc_pg_old)
    migration = f"seq-{table_name[-4:]}"
    capture.note_loss(cdc_pg_old, migration, cdc_pg_old, "first")
    started = capture.loss_marks(cdc_pg_old, migration, [cdc_pg_old])
    capture.note_loss(cdc_pg_old, migration, cdc_pg_old, "noted while verifying")
    assert capture.clear_losses(cdc_pg_old, migration, [cdc_pg_old], upto=started) == []
    assert capture.losses(cdc_pg_old, migration, [cdc_pg_old]) == ["noted while verifying"]
    later = capture.loss_marks(cdc_pg_old, migration, [cdc_pg_old])
    assert capture.clear_losses(cdc_pg_old, migration, [cdc_pg_old], upto=later) == ["noted while verifying"]
    assert capture.losses(cdc_pg_old, migration, [cdc_pg_old]) == []
    capture.note_loss(cdc_pg_old, migration, cdc_pg_old, "after the clear")
    assert capture.clear_losses(cdc_pg_old, migration, [cdc_pg_old], upto=later) == []  # an older reading
    assert capture.losses(cdc_pg_old, migration, [cdc_pg_old]) == ["after the clear"]
    capture.teardown(cdc_pg_old, cdc_pg_old, migration)
