"""[T2-1] Repairs flow one way: into the store that is not authoritative *now*, from the authoritative
store's current row, and never while authority is moving (a write fence is published).

A key queued for repair while the old store was authoritative, and drained after write cutover, used to be
mirrored old -> new: the stale old row overwrote the write the new store had acknowledged.
"""

from __future__ import annotations

from conftest import create_pg, execute, fetch_all, spec_for

from activities.core import repair_authority
from dualwrite import control
from dualwrite.mapping import identity_mapping
from dualwrite.relay import drain_repairs
from dualwrite.store import Store


def test_a_repair_queued_under_the_old_authority_is_drained_towards_the_old_store_after_cutover(
        pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 3)
    create_pg(pg_new, table_name, 3)
    name = f"rd-{table_name[-4:]}"
    spec = spec_for(name, "pgold", "pgnew", table_name)
    control.ensure_schema(pg_old)
    # the secondary write of key 2 failed while old was authoritative ...
    control.enqueue_repair(pg_old, name, table_name, [(2,)], reason="timeout", authoritative="old")
    # ... then authority moved, and the application wrote key 2 on the new store
    control.publish_state(pg_old, name, "CUTOVER_WRITES", 7)
    execute(pg_new, f"UPDATE {table_name} SET name = 'acknowledged-on-new', version = 2 WHERE id = 2")

    assert repair_authority(pg_old, spec) == "new"
    forward = identity_mapping(pg_old.describe(table_name), pg_new.describe(table_name), version="version")

    def mapping_for(_table: str, reverse: bool) -> object:
        return forward.reversed() if reverse else forward

    res = drain_repairs(pg_old, pg_old, pg_new, name, mapping_for,  # type: ignore[arg-type]
                        authority=repair_authority(pg_old, spec))
    assert res.mirrored == 1
    for store in (pg_new, pg_old):
        assert fetch_all(store, f"SELECT name FROM {table_name} WHERE id = 2") == [("acknowledged-on-new",)]


def test_no_background_repair_while_a_write_fence_is_published(pg_old: Store, table_name: str) -> None:
    name = f"rf-{table_name[-4:]}"
    spec = spec_for(name, "pgold", "pgnew", table_name)
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, name, "CUTOVER_READS", 3, overrides=control.fence_overrides({}, None))
    assert repair_authority(pg_old, spec) == "fenced"
    # the workflow's own drain under the fence runs, in the direction of the authority still in force
    assert repair_authority(pg_old, spec, under_fence=True) == "old"
    control.publish_state(pg_old, name, "CUTOVER_WRITES", 4)
    assert repair_authority(pg_old, spec) == "new"
