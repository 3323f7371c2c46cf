"""[T2-7] Every write through the adapter: an application (strategy ``sync``) with a forgotten raw write path
that writes plain SQL to the OLD store on the application's own engine.

- A raw write that lands while the write fence is up (after the gate looked, before authority moves) is
  collected under the fence and repaired into the new store before the flip (``bypass-fence-collect``): the
  new store holds it the moment the advance returns. When that collection fails, the flip is refused.
- After write cutover the old store refuses the raw path (``bypass-refuse-old``) with an error naming the
  migration and saying to write through the adapter, while the adapter's own writes (and dualwrite's repairs)
  pass; ``dualwrite status`` and the metric count the refused writes.
- A rollback lifts the refusal: the raw path writes the old store again; so does an abort.
- No acknowledged write is lost: every adapter write and every raw write the database accepted ends on both
  stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MigrationDriver, create_pg, eventually, execute, fetch_all, save_histories, spec_for
from test_workflow_handlers import acli

from dualwrite import bypass, control, triggers
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.metrics import MigrationView
from dualwrite.store import Store

WINDOW = 2


def _name(store: Store, table: str, key: int) -> str | None:
    rows = fetch_all(store, f"SELECT name FROM {table} WHERE id = {key}")
    return str(rows[0][0]) if rows else None


def _raw_update(app: Store, table: str, key: int, name: str) -> None:
    """The forgotten write path: plain SQL on the application's own engine (the old store)."""
    with app.engine.connect() as conn:
        conn.exec_driver_sql(f"UPDATE {table} SET name = %s, version = version + 1 WHERE id = %s", (name, key))
        conn.commit()


def _fenced(store: Store, name: str) -> bool:
    state = control.read_state(store, name)
    return state is not None and control.is_fenced(state.overrides, None)


async def test_forgotten_raw_path_is_collected_under_the_fence_and_refused_after_write_cutover(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str, databases: Any) -> None:
    create_pg(pg_old, table_name, 40)
    create_pg(pg_new, table_name, 0)
    url = pg_old.engine.url.render_as_string(hide_password=False)
    app = Store(StoreRef("pgold", url + "?application_name=shop-cron"), pool_size=2)
    app_new = Store(StoreRef("pgnew", pg_new.engine.url.render_as_string(hide_password=False)), pool_size=1)
    databases.stores += [app, app_new]
    name = f"bypr-{table_name[-4:]}"
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="sync", gates={"window_seconds": WINDOW})
    handle = await dw.start(spec)
    await dw.settled(handle, "PREPARE")
    writer = DualWriter(spec, app, app_new, options=AdapterOptions(phase_ttl=0.05, pool_size=1))
    acked: dict[int, str] = {}

    def write(key: int, value: str) -> None:
        writer.update(table_name, key, {"name": value})
        acked[key] = value

    try:
        await dw.advance_to(handle, "CUTOVER_READS")
        write(10, "adapter-reads")

        async def advance_with_raw_write_under_fence(key: int, value: str, during: Any = None) -> Any:
            """The raw path writes while the write fence is up: an adapter unit of work routed before the fence
            holds the fence's barrier open, so the raw write lands after the gate looked, before the flip."""
            entered, release = threading.Event(), threading.Event()

            def hold() -> None:
                with writer.unit_of_work() as uow:
                    uow.update(table_name, 20, {"name": f"held-{key}"})
                    entered.set()
                    release.wait(30)
                acked[20] = f"held-{key}"

            th = threading.Thread(target=hold, daemon=True)
            th.start()
            assert await asyncio.to_thread(entered.wait, 10)
            advance = asyncio.create_task(dw.update(handle, "advance", by="pytest", reason="cutover writes"))
            await eventually(lambda: _fenced(pg_old, name), timeout=30, what="write fence published")
            _raw_update(app, table_name, key, value)
            acked[key] = value
            if during is not None:
                during()
            release.set()
            await asyncio.to_thread(th.join, 30)
            return await advance

        # 0. the collection under the fence fails (its table is broken): the flip is refused, never made with
        # uncollected bypassed writes, and the old store accepts raw writes again
        broken = f"ALTER TABLE {bypass.BYPASS} RENAME COLUMN writer TO writer_broken"
        res = await advance_with_raw_write_under_fence(3, "raw-refused-flip", lambda: execute(pg_old, broken))
        execute(pg_old, f"ALTER TABLE {bypass.BYPASS} RENAME COLUMN writer_broken TO writer")
        assert not res.ok and res.phase == "CUTOVER_READS", res.message
        assert "collecting the writes that bypassed the adapter failed under the write fence" in res.message
        assert not triggers.writes_denied(pg_old, name, table_name)
        _raw_update(app, table_name, 6, "raw-still-accepted")
        acked[6] = "raw-still-accepted"
        await asyncio.sleep(WINDOW + 0.5)  # those raw writes leave the gate's window

        # 1. collected under the fence and repaired before the flip: the new store holds it right away
        res = await advance_with_raw_write_under_fence(7, "raw-under-fence")
        assert res.ok and res.phase == "CUTOVER_WRITES", res.message
        assert _name(pg_new, table_name, 7) == "raw-under-fence"
        status = await dw.status(handle)
        assert status.bypass is not None and status.bypass.total >= 1, status.bypass

        # 2. after write cutover the old store refuses the raw path, naming the migration and the way out
        await dw.settled(handle, "CUTOVER_WRITES")
        assert triggers.writes_denied(pg_old, name, table_name)
        with pytest.raises(sa.exc.DBAPIError) as refused:
            _raw_update(app, table_name, 5, "lost-write")
        text = str(refused.value)
        assert name in text and "write through the dualwrite adapter" in text, text
        assert _name(pg_old, table_name, 5) != "lost-write" and _name(pg_new, table_name, 5) != "lost-write"
        write(11, "adapter-writes")  # the adapter's marked transactions pass, on both stores
        assert _name(pg_old, table_name, 11) == "adapter-writes" and _name(pg_new, table_name, 11) == "adapter-writes"
        status = await dw.status(handle)
        assert status.bypass.old_store == "refusing", status.bypass
        rc, out, err = await acli(dw, "status", name)
        assert rc == 0, err
        assert "old store refuses writes that bypass the adapter:" in " ".join(out.split()), out

        # 3. rollback: the refusal is lifted, the raw path writes the old store again; the refusals were counted
        # (read under the rollback's fence)
        res = await dw.update(handle, "rollback", by="pytest", reason="back", to="CUTOVER_READS")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        assert not triggers.writes_denied(pg_old, name, table_name)
        _raw_update(app, table_name, 5, "raw-after-rollback")
        acked[5] = "raw-after-rollback"
        status = await dw.status(handle)
        assert status.bypass is not None and status.bypass.old_store == "", status.bypass
        assert MigrationView.from_status(status).old_refused == 1  # dualwrite_old_store_refused_writes
        rc, out, err = await acli(dw, "status", name)
        assert rc == 0, err
        assert "it refused 1 writes that bypassed the adapter" in " ".join(out.split()), out
        await dw.settled(handle, "CUTOVER_READS")

        # 4. no acknowledged write lost: each one on both stores (the raw one reaches the new store by repair)
        def level() -> bool:
            return all(_name(s, table_name, k) == v for k, v in acked.items() for s in (pg_old, pg_new))

        await eventually(level, timeout=60, what="every acknowledged write on both stores")

        # 5. abort out of write cutover lifts the refusal too
        await asyncio.sleep(WINDOW + 0.5)  # the raw write after the rollback leaves the gate's window
        res = await dw.update(handle, "advance", by="pytest", reason="cutover writes again")
        assert res.ok and res.phase == "CUTOVER_WRITES", res.message
        assert triggers.writes_denied(pg_old, name, table_name)
        res = await dw.update(handle, "abort", by="pytest", reason="test over")
        assert res.ok, res.message
        assert not triggers.writes_denied(pg_old, name, table_name)
        _raw_update(app, table_name, 5, "raw-after-abort")
        assert _name(pg_old, table_name, 5) == "raw-after-abort"
        status = await dw.status(handle)
        assert status.bypass is not None and status.bypass.old_store == "", status.bypass
        await save_histories(dw.client, handle.id, "bypass-refuse-old")
    finally:
        writer.close()
        with contextlib.suppress(Exception):  # a failure above may have left the log's table broken
            execute(pg_old, f"ALTER TABLE {bypass.BYPASS} RENAME COLUMN writer_broken TO writer")
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
