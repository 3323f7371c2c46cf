"""[T2-4] A relay round never writes into a store after authority moved to it.

The relay mirrors the authoritative store's log into the other store, which refuses the application's
writes (denied writes). When authority moves, the denial is lifted and the application writes there at
once; a round that read the old phase just before must not overwrite those writes with the old store's
rows. The round checks, in the very transaction that would write, that the target is still denied.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import execute, fetch_all

from dualwrite import triggers
from dualwrite.cdc import capture, pg
from dualwrite.cdc.pg import TableKeys
from dualwrite.config import StoreRef
from dualwrite.errors import AuthorityMovedError
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store


def _replica(store: Store, databases: Any) -> Store:
    """The relay's own session on ``store`` (passes the deny triggers), on an engine of its own."""
    s = Store(StoreRef(store.name + "_relay", store.engine.url.render_as_string(hide_password=False)))
    triggers.mark_replica(s)
    databases.stores.append(s)
    return s


def test_a_round_does_not_mirror_into_a_store_whose_denial_was_lifted(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str, databases: Any) -> None:
    ddl = f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text NOT NULL)"
    execute(cdc_pg_old, ddl, f"INSERT INTO {table_name} VALUES (1, 'a'), (2, 'b')")
    execute(cdc_pg_new, ddl, f"INSERT INTO {table_name} VALUES (1, 'a'), (2, 'b')")
    migration = f"ag-{table_name[-4:]}"
    old, new = _replica(cdc_pg_old, databases), _replica(cdc_pg_new, databases)
    capture.setup(old, old, migration, [table_name])
    try:
        triggers.deny_writes(new, migration, [table_name], "old")
        execute(cdc_pg_old, f"UPDATE {table_name} SET name = 'old-store write' WHERE id = 1")
        mapping = identity_mapping(old.describe(table_name, refresh=True), new.describe(table_name, refresh=True))
        tk = [TableKeys(table_name, ["id"], list(mapping.key_kinds))]
        before = pg.confirmed(old, migration)

        # authority moves to the new store: its denial is lifted and the application writes there
        triggers.allow_writes(new, migration, [table_name])
        execute(cdc_pg_new, f"UPDATE {table_name} SET name = 'acknowledged on new' WHERE id = 1")

        with pytest.raises(AuthorityMovedError, match="no longer denied"):
            capture.drain_batch(old, new, old, migration, tk, lambda _t: mapping, reverse=False, guarded=True)
        assert fetch_all(cdc_pg_new, f"SELECT name FROM {table_name} WHERE id = 1") == [("acknowledged on new",)]
        assert pg.confirmed(old, migration) == before, "nothing applied, so the slot stays where it was"

        # while the target is denied, the same round mirrors
        triggers.deny_writes(new, migration, [table_name], "old")
        res = capture.drain_batch(old, new, old, migration, tk, lambda _t: mapping, reverse=False, guarded=True)
        assert res.mirrored == 1
        assert fetch_all(cdc_pg_new, f"SELECT name FROM {table_name} WHERE id = 1") == [("old-store write",)]
    finally:
        triggers.allow_writes(new, migration, [table_name])
        capture.teardown(old, old, migration)
