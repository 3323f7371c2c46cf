"""``strict`` when the authoritative COMMIT's reply is lost on a real connection, on every path of the adapter.

A TCP proxy in front of the authoritative store (:class:`app.lost_reply.LostReplyProxy`) lets the COMMIT
reach the server and commit, then throws the answer away and cuts the connection: the driver raises, the
write stands. The request succeeded (both stores have the write) and must be reported as such, not as a
failure the application retries into a duplicate. The twin fault - the COMMIT itself lost, so the server
rolls back - must fail the request with :class:`StrictWriteError` naming the authoritative store, and
leave the write in neither store.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from app.endpoints import NOW
from app.harness import Migration, clone, make_migration
from app.lost_reply import LostReplyProxy

from dualwrite import control
from dualwrite.adapter import AdapterOptions
from dualwrite.adapter.strict import NOTES
from dualwrite.errors import StrictWriteError
from dualwrite.store import Store

PAIRS = ["pg_old>pg_new", "my_old>pg_new"]


def _opts() -> AdapterOptions:
    return AdapterOptions(background=False, phase_ttl=0.05, recheck_delay=0.05, read_your_writes_seconds=0.3,
                          strict_note_grace=60.0)


@pytest.fixture
def through_proxy(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Store, LostReplyProxy]]:
    """(old store seen through the proxy, new store, the proxy) for the pair the test is parametrized with."""
    old, new = (request.getfixturevalue(n) for n in request.param.split(">"))
    host, port = old.engine.url.host, old.engine.url.port
    proxy = LostReplyProxy(host or "127.0.0.1", int(port or (5432 if old.dialect.value == "postgresql" else 3306)))
    proxy.start()
    try:
        yield clone(old, url=proxy.url_for(old.ref.url)), new, proxy
    finally:
        proxy.stop()


def _customer(m: Migration, name: str) -> Any:
    return m.models.Customer(tenant="t", name=name, balance=Decimal("1.00"), active=True, created_at=NOW, version=1)


def _no_notes_left(m: Migration, fetch: Any) -> None:
    m.writer.strict.flush()  # type: ignore[union-attr]
    for store in (m.old, m.new):  # the secondary's note and the authoritative marker are both gone
        assert fetch(store, f"SELECT count(*) FROM {NOTES} WHERE migration = '{m.name}'") == [(0,)]


@pytest.mark.parametrize("through_proxy", PAIRS, indirect=True)
def test_orm_strict_commit_whose_reply_was_lost_succeeds_and_a_lost_commit_fails_in_neither(
        through_proxy: tuple[Store, Store, LostReplyProxy], fetch: Any) -> None:
    old, new, proxy = through_proxy
    m = make_migration(old, new, "strict", options=_opts())  # the ORM's engine is the proxied one
    try:
        m.publish("DUAL_WRITE")
        t = m.models.customers

        proxy.arm(b"orm: committed, reply lost")
        with m.sessions() as s:
            c = _customer(m, "orm: committed, reply lost")
            s.add(c)
            s.commit()  # no exception: it committed in both stores
        assert proxy.fired.is_set()
        assert m.row("old", t, c.id)["name"] == "orm: committed, reply lost"
        assert m.row("new", t, c.id)["name"] == "orm: committed, reply lost"
        assert control.repair_queue_depth(m.control, m.name) == 0
        _no_notes_left(m, fetch)

        proxy.arm(b"orm: commit lost", deliver=False)
        with m.sessions() as s:
            lost = _customer(m, "orm: commit lost")
            s.add(lost)
            s.flush()
            key = lost.id
            with pytest.raises(StrictWriteError) as failed:
                s.commit()
        assert proxy.fired.is_set()
        assert failed.value.store == "old" and failed.value.role == "authoritative"
        assert "failed on the old store" in str(failed.value)
        assert m.row("old", t, key) is None and m.row("new", t, key) is None  # in neither
        _no_notes_left(m, fetch)

        with m.sessions() as s:  # the pool is healthy afterwards: the dead connections were discarded
            s.add(_customer(m, "after"))
            s.commit()
    finally:
        m.close()


def _row(name: str) -> dict[str, Any]:
    return {"tenant": "t", "name": name, "balance": Decimal("1.00"), "active": True, "created_at": NOW,
            "version": 1}


@pytest.mark.parametrize("through_proxy", ["pg_old>pg_new"], indirect=True)
async def test_asyncio_strict_commit_whose_reply_was_lost_succeeds_and_a_lost_commit_fails_in_neither(
        through_proxy: tuple[Store, Store, LostReplyProxy], fetch: Any) -> None:
    """The asyncio Core adapter (its transaction on the application's AsyncEngine) and the async ORM."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from dualwrite.adapter import AsyncDualWriter, install_async

    old, new, proxy = through_proxy
    m = make_migration(old, new, "strict", options=_opts())
    engine = create_async_engine(old.ref.url, connect_args={"options": "-c TimeZone=UTC"})
    aw = AsyncDualWriter(m.writer, old_engine=engine)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install_async(maker, m.writer)
    t = m.models.customers
    try:
        m.publish("DUAL_WRITE")
        proxy.arm(b"aio: committed, reply lost")
        (k,) = await aw.insert(t, _row("aio: committed, reply lost"))  # no exception: it committed
        assert proxy.fired.is_set()
        assert m.row("old", t, k)["name"] == "aio: committed, reply lost"
        assert m.row("new", t, k)["name"] == "aio: committed, reply lost"

        proxy.arm(b"aio: commit lost", deliver=False)
        with pytest.raises(StrictWriteError) as failed:
            await aw.insert(t, {**_row("aio: commit lost"), "id": 9_000_031})
        assert proxy.fired.is_set()
        assert failed.value.store == "old" and failed.value.role == "authoritative"
        assert m.row("old", t, 9_000_031) is None and m.row("new", t, 9_000_031) is None

        proxy.arm(b"async orm: committed, reply lost")
        async with maker() as s:
            c = _customer(m, "async orm: committed, reply lost")
            s.add(c)
            await s.commit()  # no exception
        assert proxy.fired.is_set()
        assert m.row("new", t, c.id)["name"] == "async orm: committed, reply lost"
        assert m.row("old", t, c.id)["name"] == "async orm: committed, reply lost"

        (k2,) = await aw.insert(t, _row("after"))  # the pool is healthy afterwards
        assert m.row("new", t, k2)["name"] == "after"
        assert control.repair_queue_depth(m.control, m.name) == 0
        await asyncio.to_thread(_no_notes_left, m, fetch)
    finally:
        await aw.close()
        await engine.dispose()
        m.close()
