"""[T2-1] A writer that bypasses the adapter (strategy ``triggers``) keeps writing through the write cutover
and through a rollback from it: no write that either store acknowledged is lost or overwritten.

The application writes raw SQL, the way an unchanged application does (tests/app/raw_writer.py): inserts of
new keys, updates with and without a version bump, deletes and re-inserts of hot keys with the version
restarting at 1. It writes to the old store until that store refuses (the write cutover denied it), then to
the new store; after the rollback the other way round. Every write it was told succeeded is in the
acknowledgement log; at the end the authoritative store holds exactly the last acknowledged value of every
key, and the two stores are equal.
"""

from __future__ import annotations

from typing import Any

from app.raw_writer import RawWriter, app_store, through_cutover_and_back
from conftest import MigrationDriver, create_pg, spec_for

from dualwrite.store import Store


async def test_raw_writer_through_write_cutover_and_rollback_loses_nothing(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str, databases: Any) -> None:
    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 0)
    old_app, new_app = app_store("rawold", pg_old), app_store("rawnew", pg_new)
    databases.stores += [old_app, new_app]
    name = f"deny-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="triggers"))
    writer = RawWriter({"old": old_app, "new": new_app}, table_name)
    await through_cutover_and_back(dw, handle, writer, old_app, new_app, pg_old, pg_new, table_name, "pgold")
    await handle.terminate("test over")
