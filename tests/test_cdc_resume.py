"""Strategy ``cdc``: the log position moves only after the keys were applied, so a worker that dies
between the mirror and the checkpoint (or in the middle of the mirror) re-reads the batch and loses
nothing (DESIGN rule 8), on both engines. The crash is simulated at exactly that step; the servers,
slot, binlog and mirror are real."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import execute, fetch_all

from dualwrite import control
from dualwrite.cdc import binlog, capture, pg
from dualwrite.cdc.pg import TableKeys
from dualwrite.errors import StoreUnavailableError
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


class KilledError(Exception):
    pass


def _setup(old: Store, new: Store, table: str, migration: str) -> tuple[Any, list[TableKeys]]:
    execute(old, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL)")
    execute(new, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL)")
    control.ensure_schema(old)
    capture.setup(old, old, migration, [table])
    mapping = identity_mapping(old.describe(table, refresh=True), new.describe(table, refresh=True))
    return mapping, [TableKeys(table, ["id"], list(mapping.key_kinds))]


def _rows(store: Store, table: str) -> list[tuple[int, str]]:
    return [(int(a), str(b)) for a, b in fetch_all(store, f"SELECT id, name FROM {table} ORDER BY id")]


def _position(store: Store, migration: str) -> object:
    return pg.confirmed(store, migration) if store.dialect.value == "postgresql" else \
        binlog.load_position(store, migration, store)


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_a_kill_between_mirror_and_checkpoint_or_inside_the_mirror_loses_nothing(
        engine: str, cdc_pg_old: Store, cdc_my_old: Store, cdc_pg_new: Store, table_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    old = cdc_pg_old if engine == "postgresql" else cdc_my_old
    migration = f"r-{table_name[-4:]}"
    mapping, tables = _setup(old, cdc_pg_new, table_name, migration)
    try:
        execute(old, *(f"INSERT INTO {table_name} VALUES ({i}, 'v{i}')" for i in range(1, 40)),
                f"UPDATE {table_name} SET name = 'upd' WHERE id < 10", f"DELETE FROM {table_name} WHERE id > 30")
        execute(cdc_pg_new, f"INSERT INTO {table_name} VALUES (35, 'stale copy')")  # must be deleted
        start = _position(old, migration)

        def drain() -> int:
            return capture.drain_batch(old, cdc_pg_new, old, migration, tables, lambda _t: mapping,
                                       reverse=False, limit=1000).entries

        # 1. the worker dies inside the mirror: nothing applied, the position stays
        real_mirror = capture.mirror_keys
        monkeypatch.setattr(capture, "mirror_keys", lambda *a, **k: (_ for _ in ()).throw(
            StoreUnavailableError("the new store went away")))
        with pytest.raises(StoreUnavailableError):
            drain()
        assert _position(old, migration) == start
        monkeypatch.setattr(capture, "mirror_keys", real_mirror)

        # 2. the worker dies after the mirror committed, before the checkpoint: the position stays ...
        def killed(*_a: Any, **_k: Any) -> None:
            raise KilledError

        monkeypatch.setattr(pg, "advance", killed)
        monkeypatch.setattr(binlog, "save_position", killed)
        with pytest.raises(KilledError):
            drain()
        monkeypatch.undo()
        assert _position(old, migration) == start
        # ... and meanwhile the application changes rows again: the replayed batch re-reads them as they are now
        execute(old, f"UPDATE {table_name} SET name = 'after the kill' WHERE id = 2",
                f"DELETE FROM {table_name} WHERE id = 3")
        while drain():
            pass
        assert _rows(cdc_pg_new, table_name) == _rows(old, table_name)
        assert (2, "after the kill") in _rows(cdc_pg_new, table_name)
        assert _position(old, migration) != start
    finally:
        capture.teardown(old, old, migration)


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_keys_captured_but_not_applied_are_in_flight_for_a_verification(
        engine: str, cdc_pg_old: Store, cdc_my_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    old = cdc_pg_old if engine == "postgresql" else cdc_my_old
    migration = f"f-{table_name[-4:]}"
    mapping, tables = _setup(old, cdc_pg_new, table_name, migration)
    try:
        execute(old, f"INSERT INTO {table_name} VALUES (7, 'a'), (8, 'b')", f"DELETE FROM {table_name} WHERE id = 8")
        flying = capture.pending_keys(old, old, migration, table_name, ["id"], list(mapping.key_kinds))
        assert flying == {(7,), (8,)}, "what the relay has not applied yet is in flight, not a difference"
        while capture.drain_batch(old, cdc_pg_new, old, migration, tables, lambda _t: mapping,
                                  reverse=False).entries:
            pass
        assert capture.pending_keys(old, old, migration, table_name, ["id"], list(mapping.key_kinds)) == set()
    finally:
        capture.teardown(old, old, migration)
