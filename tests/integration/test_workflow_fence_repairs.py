"""Authority never moves while an acknowledged write exists only on the losing store ([T2-5]).

The chaos harness (``bench.chaos --pair mariadb-pg --strategy async --writer adapter``, seed 4302) lost two
acknowledged re-inserts at the rollback from CUTOVER_WRITES to CUTOVER_READS. The rollback levels the old store
first (drain, verify new -> old with repair) while writes go on; a write the new store acknowledged after that,
whose async secondary write failed, waited in the repair queue; the write fence's drain could not mirror it
(the store was unreachable; or the entry was deferred by backoff and not due), and the flip went ahead anyway:
the old store, authoritative again, lacked the write, and the verification on entering CUTOVER_READS "repaired"
the new store back to the old row.

Here, deterministically, with the ``async`` strategy in CUTOVER_WRITES:

- key A is deleted and re-inserted by the application while the old store is unreachable for it (a
  :class:`TcpProxy` stopped): the async secondary write fails, the repair queue takes the key, and a repair
  attempt made while the store is still down defers it for ten minutes (not due at the rollback);
- key B is updated in a unit of work that stays open until the rollback's write fence is published (routed
  before the fence, so the barrier waits for it), to a value the old store rejects (a CHECK constraint):
  it commits after the rollback's verification, and every mirror of it into the old store fails.

The first rollback must mirror A under the fence although its backoff has not passed, and must be refused
because B cannot be mirrored (the reason names the repair queue). Once the constraint is gone the rollback goes
ahead, and both stores hold both acknowledged values.

Real Temporal dev server, the session's in-process worker, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from app.harness import TcpProxy, clone
from conftest import PG_HOST, PG_PORT, MigrationDriver, create_pg, eventually, execute, fetch_all, spec_for

from dualwrite import control, relay
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.adapter.phase import Side
from dualwrite.store import Store
from workflows.models import Phase

A, B = 5, 7


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(PG_HOST, PG_PORT)
    p.start()
    yield p
    p.stop()


def _name(store: Store, table: str, key: int) -> str | None:
    rows = fetch_all(store, f"SELECT name FROM {table} WHERE id = {int(key)}")
    return str(rows[0][0]) if rows else None


async def _advance(dw: MigrationDriver, handle: Any, phase: str) -> Any:
    """Forced advances: the gates read traffic statistics this test does not produce."""
    st = await dw.status(handle)
    while Phase(st.phase).rank < Phase(phase).rank:
        await dw.settled(handle, st.phase, 120)
        res = await dw.update(handle, "advance", by="pytest", reason="fence repairs test", force=True)
        assert res.ok, res.message
        st = await dw.settled(handle, res.phase, 120)
    return st


def _write_on_the_new_store_only(w: DualWriter, proxy: TcpProxy, control_store: Store, table: str) -> None:
    """Key A re-inserted while the old store is down for the application (its repair deferred by backoff)."""
    w.update(table, A, {"name": "before", "version": 2})
    assert w.lagged is not None and w.lagged.flush(timeout=10)
    proxy.stop()
    try:
        w.delete(table, A)
        w.insert(table, {"id": A, "name": "acked-A", "amount": Decimal("1.00"), "updated_at": None, "version": 1})
        assert w.lagged.flush(timeout=30)  # the secondary write failed: the keys are in the repair queue
        # a repair attempt while the store is still down: deferred for minutes, not due at the rollback
        res = relay.drain_repairs(control_store, w.data[Side.OLD], w.data[Side.NEW], w.migration,
                                  w.mapping_for, base_backoff_seconds=600, max_backoff_seconds=600)
        assert res.failed and not res.mirrored
    finally:
        proxy.start()


def _commit_after_the_fence(w: DualWriter, table: str, opened: threading.Event) -> None:
    """Key B: a unit of work routed under CUTOVER_WRITES that commits once the write fence is published."""
    with w.unit_of_work(entity=f"{table}:{B}") as uow:
        assert uow.update(table, B, {"name": "poison-B", "version": 2}) == 1
        opened.set()
        deadline = time.monotonic() + 120
        while not w.phase.fenced() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.phase.fenced(), "no write fence was published"


async def test_rollback_waits_for_the_repair_queue_of_the_losing_store(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, proxy: TcpProxy, table_name: str) -> None:
    t = table_name
    create_pg(pg_old, t, 20)
    create_pg(pg_new, t, 0)
    name = f"fencerep-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", t, strategy="async")
    handle = await dw.start(spec)
    writer: DualWriter | None = None
    try:
        await _advance(dw, handle, "CUTOVER_WRITES")
        old_for_app = clone(pg_old, url=proxy.url_for(pg_old.ref.url))
        writer = DualWriter(spec, old_for_app, pg_new, control_store=pg_old,
                            options=AdapterOptions(fence_max_wait=15.0), instance_id=f"{name}-app")
        await asyncio.to_thread(writer.phase.refresh, force=True)
        execute(pg_old, f"ALTER TABLE {t} ADD CONSTRAINT {t}_nopoison CHECK (name <> 'poison-B')")
        await asyncio.to_thread(_write_on_the_new_store_only, writer, proxy, pg_old, t)
        assert _name(pg_new, t, A) == "acked-A" and _name(pg_old, t, A) == "before"  # on the new store only
        assert control.repair_queue_depth(pg_old, name) >= 1

        refusals: list[str] = []
        opened = threading.Event()
        late = asyncio.create_task(asyncio.to_thread(_commit_after_the_fence, writer, t, opened))
        assert await asyncio.to_thread(opened.wait, 30)
        res = await dw.update(handle, "rollback", to="CUTOVER_READS", reason="fence repairs test", by="pytest")
        await late  # acknowledged on the new store after the rollback's verification
        assert _name(pg_new, t, B) == "poison-B"
        if not res.ok:
            refusals.append(res.message)
            execute(pg_old, f"ALTER TABLE {t} DROP CONSTRAINT {t}_nopoison")
            res = await dw.update(handle, "rollback", to="CUTOVER_READS", reason="fence repairs test",
                                  by="pytest")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        st = await dw.settled(handle, "CUTOVER_READS", 120)

        # the rule: every acknowledged write is in the store that is authoritative now, and stays in the other
        assert (_name(pg_old, t, A), _name(pg_old, t, B)) == ("acked-A", "poison-B"), \
            "the rollback moved authority while acknowledged writes were only on the new store"
        await eventually(lambda: control.repair_queue_depth(pg_old, name) == 0, 60, "the repair queue drained")
        assert (_name(pg_new, t, A), _name(pg_new, t, B)) == ("acked-A", "poison-B")

        # how: the deferred key was mirrored under the fence; the key that could not be was a clear refusal
        assert len(refusals) == 1, refusals
        assert "repair queue" in refusals[0] and "CUTOVER_WRITES" in refusals[0], refusals[0]
        # actionable: which table, how many keys, why, and the way through (scoped: the migration flips)
        assert "key(s) of the migration" in refusals[0] and f"table {t}: " in refusals[0], refusals[0]
        assert "CheckViolation" in refusals[0] and "--override-stuck-repairs" in refusals[0], refusals[0]
        assert st.counters.get("write_fences_refused", 0) == 1, st.counters
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(writer.close)
        with contextlib.suppress(Exception):
            execute(pg_old, f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {t}_nopoison")
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
