"""The async queue, the sync mirror and the write fence when the control store cannot take a failed key
([T2-5]).

A key whose async secondary write failed goes to the repair queue, which the workflow drains under the write
fence before authority moves. While the control store refuses it, the key is held in this process's memory,
where that drain cannot see it: the epoch it was routed under stays held, so the fence's barrier cannot pass
until the control store has taken the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from app.endpoints import NOW
from app.harness import TcpProxy, clone, make_migration
from conftest import PG_HOST, PG_PORT

from dualwrite import control
from dualwrite.adapter import AdapterOptions
from dualwrite.store import Store


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(PG_HOST, PG_PORT)
    p.start()
    yield p
    p.stop()


def _refuse(*_a: Any, **_kw: Any) -> None:
    raise OSError("the control store is unreachable")


def test_async_key_held_in_memory_holds_the_write_fence(pg_old: Store, pg_new: Store, proxy: TcpProxy,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    opts = AdapterOptions(background=False, phase_ttl=0.05, recheck_delay=0.05, read_your_writes_seconds=0.3,
                          async_workers=1, async_batch=1)
    m = make_migration(pg_old, pg_new, "async", writer_new=clone(pg_new, url=proxy.url_for(pg_new.ref.url)),
                       options=opts)
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        assert w.lagged is not None
        row = {"tenant": "t", "name": "held", "balance": Decimal("1.00"), "active": True, "created_at": NOW,
               "version": 1}
        with proxy.down(), monkeypatch.context() as mp:
            mp.setattr(control, "enqueue_repair", _refuse)
            (k,) = w.insert(t, row)  # acknowledged on the old store; the new store is down
            assert w.lagged.flush(timeout=30)
            assert w.pending_repairs == 1  # the control store refused it: held in memory
            m.publish("CUTOVER_READS", overrides={"fence": {"all": True}})
            w.phase.refresh(force=True)
            assert not control.barrier(m.control, m.name, m.epoch).passed  # the key is only in memory
        assert w.retry_pending_repairs() == 1  # the control store is back and takes it
        w.phase.refresh(force=True)
        assert control.barrier(m.control, m.name, m.epoch).passed
        assert control.repair_queue_depth(m.control, m.name) == 1  # where the fence's drain finds it
        m.publish("CUTOVER_READS")  # (the writer's own drain, like the background one, waits out a fence)
        w.drain_repairs()
        assert m.diffs(t, [k]) == []
    finally:
        m.close()


def test_sync_key_held_in_memory_holds_the_write_fence(pg_old: Store, pg_new: Store, proxy: TcpProxy,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same hole in ``sync``: its failed secondary write is acknowledged already, so until the key is
    durable in the repair queue the epoch it was written under stays held."""
    opts = AdapterOptions(background=False, phase_ttl=0.05, recheck_delay=0.05, read_your_writes_seconds=0.3)
    m = make_migration(pg_old, pg_new, "sync", writer_new=clone(pg_new, url=proxy.url_for(pg_new.ref.url)),
                       options=opts)
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        row = {"tenant": "t", "name": "held", "balance": Decimal("1.00"), "active": True, "created_at": NOW,
               "version": 1}
        with proxy.down(), monkeypatch.context() as mp:
            mp.setattr(control, "enqueue_repair", _refuse)
            (k,) = w.insert(t, row)  # acknowledged on the old store; the new store is down
            assert w.pending_repairs == 1  # the control store refused it: held in memory
            m.publish("CUTOVER_READS", overrides={"fence": {"all": True}})
            w.phase.refresh(force=True)
            assert not control.barrier(m.control, m.name, m.epoch).passed  # the key is only in memory
        assert w.retry_pending_repairs() == 1
        w.phase.refresh(force=True)
        assert control.barrier(m.control, m.name, m.epoch).passed
        m.publish("CUTOVER_READS")
        w.drain_repairs()
        assert m.diffs(t, [k]) == []
    finally:
        m.close()
