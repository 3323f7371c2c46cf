"""The asyncio flavour: the Core API on AsyncConnection and the ORM integration on async_sessionmaker."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa
from app.endpoints import NOW
from app.harness import make_migration
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from structlog.testing import capture_logs

from dualwrite.adapter import AsyncDualWriter, install_async
from dualwrite.store import Store


@pytest.mark.parametrize("strategy", ["sync", "outbox"])
async def test_async_core_api_follows(pg_old: Store, pg_new: Store, strategy: str) -> None:
    m = make_migration(pg_old, pg_new, strategy)
    aw = AsyncDualWriter(m.writer)
    try:
        m.publish("DUAL_WRITE")
        t = m.models.customers
        k = await aw.insert(t, {"tenant": "as", "name": "a1", "balance": Decimal("1.50"), "active": True,
                                "created_at": NOW})
        assert await aw.update(t, k, {"name": "a2"}) == 1
        async with aw.unit_of_work(tenant="as") as uow:
            k2 = await uow.insert(t, {"tenant": "as", "name": "b", "balance": 0, "active": False, "created_at": NOW})
            await uow.upsert(t, {"id": -5, "tenant": "as", "name": "up", "balance": 1, "active": True,
                                 "created_at": NOW})
            await uow.delete(t, k2)
        assert (await aw.read(t, k))["name"] == "a2"
        if strategy == "outbox":
            assert m.row("new", t, k[0]) is None
            await asyncio.to_thread(m.relay)
        assert m.diffs(t, [k[0], k2[0], -5]) == []
        assert m.row("new", t, -5)["name"] == "up" and m.row("new", t, k2[0]) is None
    finally:
        await aw.close()
        m.close()


async def test_async_orm_integration(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "sync")
    engine = create_async_engine(pg_old.ref.url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    binding = install_async(maker, m.writer)
    C = m.models.Customer
    try:
        m.publish("DUAL_WRITE")
        async with maker() as s:
            c = C(tenant="orm", name="async", created_at=NOW)
            s.add(c)
            s.add(m.models.Audit(tenant="orm", message="not migrated"))
            await s.commit()
            cid = c.id
        assert m.row("new", m.models.customers, cid)["name"] == "async"  # mirrored before commit() returned
        async with maker() as s, s.begin():  # commit through the transaction context
            obj = await s.get(C, cid)
            obj.name = "renamed"
        deadline = time.monotonic() + 5
        while m.row("new", m.models.customers, cid)["name"] != "renamed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert m.diffs(m.models.customers, [cid]) == []
        m.publish("SHADOW_READ")
        with capture_logs() as logs:
            async with maker() as s:
                assert (await s.get(C, cid)).name == "renamed"
            deadline = time.monotonic() + 5
            while m.writer.shadow.in_flight() or m.writer.scheduler.pending():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        assert [e for e in logs if e.get("event") == "shadow_mismatch"] == []
        assert m.writer.stats.snapshot().count("shadow", "match") == 1
        async with maker() as s:
            await s.execute(sa.delete(C).where(C.id == cid))
            await s.commit()
        assert m.row("new", m.models.customers, cid) is None
    finally:
        for e in binding.async_engines.values():  # type: ignore[attr-defined]
            await e.dispose()
        m.close()
