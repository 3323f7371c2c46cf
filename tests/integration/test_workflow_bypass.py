"""[T2-7] An application that writes through the adapter (strategy ``sync``) except for one forgotten raw UPDATE
path: the workflow catches that path at runtime, names the table and the writer the database knows (never the
keys), refuses cutover while it keeps writing, queues the bypassed keys so the new store converges anyway, and
lets cutover go ahead once the path is fixed (no bypassed write within the gate's window).

The raw path shares the application's engine (and pooled connections) with the adapter, so the adapter's
per-transaction mark must neither leak into the raw writes nor miss the adapter's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from conftest import MigrationDriver, create_pg, eventually, fetch_all, spec_for
from test_workflow_handlers import acli

from dualwrite import bypass
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.metrics import MigrationView
from dualwrite.store import Store

WINDOW = 4


def _name(store: Store, table: str, key: int) -> str | None:
    rows = fetch_all(store, f"SELECT name FROM {table} WHERE id = {key}")
    return str(rows[0][0]) if rows else None


def _raw_update(app: Store, table: str, key: int, name: str) -> None:
    """The forgotten write path: plain SQL on the application's own engine."""
    with app.engine.connect() as conn:
        conn.exec_driver_sql(f"UPDATE {table} SET name = %s, version = version + 1 WHERE id = %s", (name, key))
        conn.commit()


async def test_forgotten_raw_update_is_caught_and_holds_cutover_until_fixed(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str, databases: Any) -> None:
    create_pg(pg_old, table_name, 40)
    create_pg(pg_new, table_name, 0)
    url = pg_old.engine.url.render_as_string(hide_password=False)
    app = Store(StoreRef("pgold", url + "?application_name=shop-billing"), pool_size=1)
    app_new = Store(StoreRef("pgnew", pg_new.engine.url.render_as_string(hide_password=False)), pool_size=1)
    databases.stores += [app, app_new]
    name = f"byp-{table_name[-4:]}"
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="sync", gates={"window_seconds": WINDOW})
    handle = await dw.start(spec)
    await dw.settled(handle, "PREPARE")
    writer = DualWriter(spec, app, app_new, options=AdapterOptions(phase_ttl=0.05, pool_size=1))
    try:
        await dw.advance_to(handle, "DUAL_WRITE")
        assert bypass.installed(pg_old, name, table_name), "no bypass capture on the authoritative store"
        await dw.advance_to(handle, "SHADOW_READ")

        # adapter writes and raw writes alternate on the same single pooled connection
        for i, key in enumerate((3, 5, 7)):
            writer.update(table_name, 10 + i, {"name": f"adapter-{i}"})
            _raw_update(app, table_name, key, f"raw-{i}")
            writer.insert(table_name, {"id": 100 + i, "name": f"new-{i}", "amount": 1, "updated_at": None,
                                       "version": 1})

        res = await dw.update(handle, "advance", by="pytest", reason="cutover reads")
        assert not res.ok and res.phase == "SHADOW_READ", res.message
        metric = next(m for m in res.gate.metrics if m.name == "bypassed_writes")
        assert metric.verdict == "fail" and metric.value == 3, metric
        assert table_name in metric.detail and "app=shop-billing" in metric.detail, metric.detail
        evidence = res.gate.evidence["bypassed_writes"]
        assert [(g["table"], g["count"]) for g in evidence] == [(table_name, 3)], evidence
        assert "raw-" not in str(res.gate.model_dump()) and "'id'" not in str(evidence)

        status = await dw.status(handle)
        assert status.bypass is not None and status.bypass.total == 3, status.bypass
        assert status.bypass.groups[0].writer.startswith("app=shop-billing user="), status.bypass
        assert MigrationView.from_status(status).bypassed == {table_name: 3}  # dualwrite_bypassed_writes
        rc, out, err = await acli(dw, "status", name)
        assert rc == 0, err
        assert "writes that bypassed the adapter: 3" in out and f"{table_name}: 3 by app=shop-billing" in out, out

        # the bypassed keys were queued for repair: the new store converges anyway
        await eventually(lambda: [_name(pg_new, table_name, k) for k in (3, 5, 7)] == ["raw-0", "raw-1", "raw-2"],
                         timeout=60, what="bypassed keys repaired into the new store")
        assert _name(pg_new, table_name, 10) == "adapter-0"

        # the path is fixed (every write through the adapter); after the window the gate passes
        writer.update(table_name, 3, {"name": "fixed"})
        await eventually(lambda: _name(pg_new, table_name, 3) == "fixed", what="adapter write mirrored")

        await asyncio.sleep(WINDOW + 0.5)
        res = await dw.update(handle, "advance", by="pytest", reason="path fixed")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        status = await dw.status(handle)
        assert status.bypass is not None and status.bypass.total == 3, status.bypass

        # write cutover moves capture to the new store (under the write fence), where a raw write is caught
        await dw.settled(handle, "CUTOVER_READS")
        res = await dw.update(handle, "advance", by="pytest", reason="cutover writes")
        assert res.ok and res.phase == "CUTOVER_WRITES", res.message
        await dw.settled(handle, "CUTOVER_WRITES")
        assert bypass.installed(pg_new, name, table_name) and not bypass.installed(pg_old, name, table_name)
        with app_new.engine.connect() as conn:
            conn.exec_driver_sql(f"UPDATE {table_name} SET name = 'raw-new' WHERE id = 9")
            conn.commit()
        writer.update(table_name, 11, {"name": "adapter-new"})
        status = await dw.wait(handle, lambda s: s.bypass is not None and s.bypass.total == 4,
                               "the raw write to the new store collected", timeout=60)
        assert status.bypass.groups[0].count == 1, status.bypass

        # abort: capture is gone from both stores
        res = await dw.update(handle, "abort", by="pytest", reason="test over")
        assert res.ok, res.message
        await eventually(lambda: not bypass.installed(pg_new, name, table_name)
                         and not bypass.installed(pg_old, name, table_name), timeout=60, what="capture removed")
    finally:
        writer.close()
        with contextlib.suppress(Exception):  # the abort completed it
            await handle.terminate("test over")


async def test_bypass_capture_goes_at_rollback_to_prepare_and_at_cleanup(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    """Capture lives on the authoritative store from DUAL_WRITE to CUTOVER_WRITES only: a rollback to PREPARE
    removes it (nothing is mirrored there, a raw write is no bypass), and CLEANUP removes it for good."""
    create_pg(pg_old, table_name, 30)
    create_pg(pg_new, table_name, 0)
    name = f"bypc-{table_name[-4:]}"
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="sync"))
    try:
        await dw.advance_to(handle, "DUAL_WRITE")
        assert bypass.installed(pg_old, name, table_name)
        res = await dw.update(handle, "rollback", by="pytest", reason="not yet", to="PREPARE")
        assert res.ok and res.phase == "PREPARE", res.message
        await eventually(lambda: not bypass.installed(pg_old, name, table_name)
                         and not bypass.installed(pg_new, name, table_name), timeout=60,
                         what="capture removed at the rollback to PREPARE")
        await dw.advance_to(handle, "CUTOVER_WRITES")
        assert bypass.installed(pg_new, name, table_name) and not bypass.installed(pg_old, name, table_name)
        await dw.advance_to(handle, "CLEANUP")
        await eventually(lambda: not bypass.installed(pg_new, name, table_name), timeout=60,
                         what="capture removed at CLEANUP")
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
