"""Whole migrations through the real Temporal dev server and real databases: PREPARE -> DONE.

- PostgreSQL -> PostgreSQL in auto mode (auto_cleanup): the workflow walks every phase by itself; the
  per-table backfill continues as new on the way (many ranges, a low suggestion limit on the server).
- MariaDB -> PostgreSQL in manual mode, with an application simulated beside it: writes mirrored through
  the mirror primitive during DUAL_WRITE and BACKFILL, failed secondary writes sent to the repair queue,
  continuous verification, and the migration workflow itself continuing as new while it idles.

Both end with the rows of the old and the new table equal.
"""

from __future__ import annotations

import asyncio
import secrets
import threading

from conftest import (
    FakeApp,
    MigrationDriver,
    create_my,
    create_pg,
    eventually,
    fast_tuning,
    retired_table,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import Client

from dualwrite import control
from dualwrite.store import Store


async def test_lifecycle_pg_to_pg_auto(dw: MigrationDriver, temporal_client: Client, pg_old: Store,
                                       pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 20_000)
    create_pg(pg_new, table_name, 0)
    name = f"life-pg-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", table_name, mode="auto", auto_cleanup=True, backfill_concurrency=3)
    handle = await dw.start(spec, tuning=fast_tuning(backfill_ranges=40))
    final = await asyncio.wait_for(handle.result(), timeout=120)

    # 7 transitions after the first epoch, plus the write fence published before write cutover
    assert final.phase == "DONE" and final.epoch == 9 and final.counters.get("write_fences") == 1
    assert [(t.from_phase, t.to_phase, t.kind) for t in final.transitions if t.kind != "cleanup"][1:] == [
        ("PREPARE", "DUAL_WRITE", "auto"), ("DUAL_WRITE", "BACKFILL", "auto"), ("BACKFILL", "SHADOW_READ", "auto"),
        ("SHADOW_READ", "CUTOVER_READS", "auto"), ("CUTOVER_READS", "CUTOVER_WRITES", "auto"),
        ("CUTOVER_WRITES", "CLEANUP", "auto"), ("CLEANUP", "DONE", "auto")]
    assert rows_of(pg_old, retired_table(final, table_name)) == rows_of(pg_new, table_name)
    assert final.counters["rows_copied"] >= 20_000
    assert final.counters["backfill_continued_as_new"] >= 1, final.counters
    assert final.tables[0].percent == 100 and final.tables[0].done
    assert final.last_verification is not None and final.last_verification.ok
    assert final.gate is not None and final.gate["passed"] and final.gate["to"] == "CLEANUP"

    desc = await handle.describe()
    sa = {k.name: v for k, v in ((p.key, p.value) for p in desc.typed_search_attributes)}
    assert (sa["MigrationPhase"], sa["BackfillPercent"]) == ("DONE", 100)
    found = [w.id async for w in temporal_client.list_workflows(
        f'WorkflowId = "{handle.id}" AND MigrationPhase = "DONE"')]
    assert found == [handle.id]
    # the control tables tell applications the final state
    state = control.read_state(pg_old, name)
    assert state is not None and (state.phase, state.epoch) == ("DONE", 9)
    await save_histories(temporal_client, handle.id, "pg-auto")


async def test_lifecycle_mariadb_to_pg_manual(dw: MigrationDriver, temporal_client: Client, my_old: Store,
                                              pg_new: Store, table_name: str) -> None:
    create_my(my_old, table_name, 4_000)
    create_pg(pg_new, table_name, 0)
    name = f"life-my-{secrets.token_hex(3)}"
    spec = spec_for(name, "myold", "pgnew", table_name, mode="manual", verify_interval_seconds=2,
                    backfill_concurrency=2, batch_size=250)
    handle = await dw.start(spec)
    app = FakeApp(my_old, pg_new, my_old, name, table_name)

    st = await dw.settled(handle, "PREPARE")
    assert st.tables[0].rows_estimate == 4_000
    assert "manual mode" in st.waiting_for

    await dw.advance_to(handle, "DUAL_WRITE")
    app.write(30)  # the application now mirrors every write to the new store

    # BACKFILL while the application keeps writing (and mirroring) from another thread
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            app.write(6)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        res = await dw.update(handle, "advance", by="alice", reason="start the backfill")
        assert res.ok and res.phase == "BACKFILL" and res.epoch == 3
        await dw.wait(handle, lambda s: s.tables[0].done, "rows copied", 120)
    finally:
        stop.set()
        await asyncio.to_thread(writer.join)
    st = await dw.settled(handle, "BACKFILL")
    assert st.tables[0].done and st.tables[0].percent == 100
    assert st.last_verification is not None and st.last_verification.ok, st.last_verification

    await dw.advance_to(handle, "SHADOW_READ")
    # secondary writes fail: their keys reach the durable queue and the drain mirrors them
    lost = app.write(12, lose_secondary=True)
    assert control.repair_queue_depth(my_old, name) > 0
    await eventually(lambda: control.repair_queue_depth(my_old, name) == 0, 30, "repair queue drained")
    st = await dw.wait(handle, lambda s: s.counters.get("repair_mirrored", 0) >= len(set(lost))
                       and s.repair_queue_depth == 0, "repairs counted")

    # continuous verification runs on its own, and the idle workflow continues as new
    before = st.counters.get("verifications", 0)
    st = await dw.wait(handle, lambda s: s.counters.get("verifications", 0) >= before + 1, "continuous verify")
    st = await dw.wait(handle, lambda s: s.counters.get("continued_as_new", 0) >= 1, "continue-as-new", 120)
    assert st.last_verification is not None and st.last_verification.ok

    for phase in ("CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP", "DONE"):
        res = await dw.update(handle, "advance", by="bob", reason=f"go {phase}", confirm_cleanup=phase == "CLEANUP")
        assert res.ok and res.phase == phase, res.message
        if phase != "DONE":
            await dw.settled(handle, phase)
    final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.phase == "DONE"
    kinds = [(t.to_phase, t.kind, t.by) for t in final.transitions if t.kind == "advance"]
    assert [k[0] for k in kinds] == ["DUAL_WRITE", "BACKFILL", "SHADOW_READ", "CUTOVER_READS", "CUTOVER_WRITES",
                                     "CLEANUP", "DONE"]
    assert ("BACKFILL", "advance", "alice") in kinds
    assert rows_of(my_old, retired_table(final, table_name)) == rows_of(pg_new, table_name)
    assert final.counters["continued_as_new"] >= 1
    await save_histories(temporal_client, handle.id, "mariadb-manual")
