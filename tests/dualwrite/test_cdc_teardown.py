"""[T2-4] Taking PostgreSQL capture down leaves no slot behind, whoever still holds it.

A relay's activity keeps running after its workflow was terminated until its heartbeat fails, and may be
reading the slot at the very moment an abort drops it. A slot left behind keeps WAL on the server for ever,
so teardown must end the session that holds it and drop it, and nothing may create it again once the
migration was aborted or cleaned up. ``pg_recvlogical`` stands in for that session: it holds the slot
active for as long as it runs.
"""

from __future__ import annotations

import pytest
from cdc_fixtures import hold_slot
from conftest import execute

from dualwrite.cdc import capture, pg
from dualwrite.store import Store


def test_teardown_drops_a_slot_that_a_running_session_holds(cdc_pg_old: Store, table_name: str) -> None:
    execute(cdc_pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)")
    migration = f"td-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    holder = hold_slot(cdc_pg_old, migration)
    try:
        capture.teardown(cdc_pg_old, cdc_pg_old, migration)
        assert not pg.slot_exists(cdc_pg_old, migration), "the slot a running session held was left behind"
        assert holder.wait(timeout=10) is not None, "the session that held the slot was ended"
    finally:
        holder.kill()
        holder.wait()


def test_no_capture_is_created_again_once_the_migration_ended(cdc_pg_old: Store, table_name: str) -> None:
    """An activity still running after an abort (a relay's drain, a late denial) must not bring the slot
    back; a new run of the migration (its preflight) may."""
    from dualwrite import control
    from dualwrite.errors import CaptureEndedError

    control.ensure_schema(cdc_pg_old)
    execute(cdc_pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, name text)")
    migration = f"te-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    capture.end(cdc_pg_old, migration)
    capture.teardown(cdc_pg_old, cdc_pg_old, migration)
    with pytest.raises(CaptureEndedError, match="aborted or cleaned up"):
        capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    assert not pg.slot_exists(cdc_pg_old, migration)
    capture.reopen(cdc_pg_old, migration)
    assert capture.setup(cdc_pg_old, cdc_pg_old, migration, [table_name])
    capture.teardown(cdc_pg_old, cdc_pg_old, migration)
