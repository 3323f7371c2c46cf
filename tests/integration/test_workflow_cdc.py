"""[T2-4] Strategy ``cdc`` end to end: an unchanged application (raw SQL, no adapter) keeps writing through
the write cutover and a rollback from it while the relay mirrors from the database's own log (a pgoutput
slot on PostgreSQL, the binlog on MariaDB); no write that either store acknowledged is lost or overwritten,
and CLEANUP removes the slot and the publication.

The writer inserts new keys, updates with and without a version bump, deletes and re-inserts hot keys. It
writes to the old store until that store refuses (the write cutover denied it), then to the new store;
after the rollback the other way round. At the end the authoritative store holds the last acknowledged
value of every key, and the stores are equal.
"""

from __future__ import annotations

from typing import Any

from app.raw_writer import RawWriter, app_store, through_cutover_and_back
from cdc_fixtures import hold_slot
from conftest import MigrationDriver, create_my, create_pg, eventually, fetch_all, spec_for

from dualwrite.cdc import pg
from dualwrite.store import Store


async def test_cdc_pg_to_pg_raw_writer_through_write_cutover_rollback_and_cleanup(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str, databases: Any) -> None:
    create_pg(cdc_pg_old, table_name, 300)
    create_pg(cdc_pg_new, table_name, 0)
    old_app, new_app = app_store("rawold", cdc_pg_old), app_store("rawnew", cdc_pg_new)
    databases.stores += [old_app, new_app]
    name = f"cdc-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc"))
    writer = RawWriter({"old": old_app, "new": new_app}, table_name)
    await through_cutover_and_back(dw, handle, writer, old_app, new_app, cdc_pg_old, cdc_pg_new, table_name,
                                    "cdcpgold")
    assert pg.slot_exists(cdc_pg_old, name) and pg.slot_exists(cdc_pg_new, name)

    # CLEANUP drops the slots and publications (a slot left behind holds WAL forever)
    await dw.advance_to(handle, "CUTOVER_WRITES")
    res = await dw.update(handle, "advance", by="pytest", reason="done", confirm_cleanup=True)
    assert res.ok, res.message
    await eventually(lambda: not pg.slot_exists(cdc_pg_old, name) and not pg.slot_exists(cdc_pg_new, name),
                     timeout=60, what="the slots dropped at CLEANUP")
    _, pub = pg.capture_names(name)
    assert fetch_all(cdc_pg_new, f"SELECT 1 FROM pg_publication WHERE pubname = '{pub}'") == []
    await handle.terminate("test over")


async def test_cdc_mariadb_to_pg_raw_writer_through_write_cutover_and_rollback(
        dw: MigrationDriver, cdc_my_old: Store, cdc_pg_new: Store, table_name: str, databases: Any) -> None:
    create_my(cdc_my_old, table_name, 300)
    create_pg(cdc_pg_new, table_name, 0)
    old_app, new_app = app_store("rawmyold", cdc_my_old), app_store("rawnew2", cdc_pg_new)
    databases.stores += [old_app, new_app]
    name = f"cdcmy-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "cdcmyold", "cdcpgnew", table_name, strategy="cdc"))
    writer = RawWriter({"old": old_app, "new": new_app}, table_name)
    await through_cutover_and_back(dw, handle, writer, old_app, new_app, cdc_my_old, cdc_pg_new, table_name,
                                    "cdcmyold")
    await handle.terminate("test over")


async def test_abort_of_a_cdc_migration_drops_the_slots_and_lifts_the_denied_writes(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    """A slot left behind keeps WAL on the server for ever; a table left denying writes refuses the
    application after it was told the migration is over."""
    import asyncio

    from conftest import execute

    from dualwrite import triggers

    create_pg(cdc_pg_old, table_name, 50)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"cdcab-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc"))
    await dw.advance_to(handle, "SHADOW_READ")
    assert pg.slot_exists(cdc_pg_old, name) and pg.slot_exists(cdc_pg_new, name)
    assert triggers.writes_denied(cdc_pg_new, name, table_name)
    # the relay is gone (terminated by an operator): the abort itself must still remove the capture, even
    # while a session still holds the slot (the terminated relay's drain runs until its heartbeat fails)
    await dw.client.get_workflow_handle(f"dualwrite-{name}-relay").terminate("operator")
    holder = hold_slot(cdc_pg_old, name)
    try:
        res = await dw.update(handle, "abort", by="pytest", reason="changed our mind")
        assert res.ok, res.message
        final = await asyncio.wait_for(handle.result(), timeout=90)
    finally:
        holder.kill()
        holder.wait()
    assert final.aborted is not None
    assert not pg.slot_exists(cdc_pg_old, name) and not pg.slot_exists(cdc_pg_new, name)
    for store in (cdc_pg_old, cdc_pg_new):
        assert not triggers.writes_denied(store, name, table_name)
        execute(store, f"INSERT INTO {table_name} (id, name, version) VALUES (900001, 'after the abort', 1)")


async def test_rollback_to_prepare_drops_the_slots_and_publications(
        dw: MigrationDriver, cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    """Back in PREPARE nothing is migrated any more: the slot that held WAL since the first PREPARE goes,
    with its publication; the capture PREPARE's denial sets up again starts afresh (a new publication)."""
    create_pg(cdc_pg_old, table_name, 20)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"cdcrb-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc"))
    await dw.advance_to(handle, "BACKFILL")
    _, pub = pg.capture_names(name)

    def pubs() -> list[tuple[object, ...]]:
        return [*fetch_all(cdc_pg_old, f"SELECT oid FROM pg_publication WHERE pubname = '{pub}'"),
                *fetch_all(cdc_pg_new, f"SELECT oid FROM pg_publication WHERE pubname = '{pub}'")]

    before = pubs()
    assert len(before) == 2 and pg.slot_exists(cdc_pg_old, name) and pg.slot_exists(cdc_pg_new, name)
    res = await dw.update(handle, "rollback", by="pytest", reason="start over", to="PREPARE")
    assert res.ok, res.message
    await dw.settled(handle, "PREPARE")
    after = pubs()
    assert not set(before) & set(after), "the publications of before the rollback were dropped"
    await handle.terminate("test over")
