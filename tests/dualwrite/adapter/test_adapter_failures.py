"""The seed's failure table, enforced on real stores.

- secondary write fails (the other store refuses connections, behind a TCP proxy that is stopped): the
  application keeps answering, each failure is counted by error class, every missed key is queued (or,
  when even the control store is down, buffered and queued later); once the store is back the repair
  drain (or the relay) makes it equal again;
- primary write fails: the request fails and the secondary is not written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from app.endpoints import scenario
from app.harness import Migration, TcpProxy, clone, make_migration
from conftest import Databases, pg_url

from dualwrite import control
from dualwrite.adapter import AdapterOptions
from dualwrite.errors import StoreUnavailableError
from dualwrite.store import Store


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5432)
    p.start()
    yield p
    p.stop()


def proxied(store: Store, p: TcpProxy) -> Store:
    return clone(store, url=p.url_for(store.ref.url))


def _all_equal(m: Migration, keys: dict[str, list[int]]) -> None:
    assert m.diffs(m.models.customers, keys["customers"]) == []
    assert m.diffs(m.models.orders, keys["orders"]) == []


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new"])
@pytest.mark.parametrize("strategy", ["sync", "outbox"])
def test_secondary_down_app_keeps_answering_and_everything_is_repaired(
        request: pytest.FixtureRequest, proxy: TcpProxy, pair: str, strategy: str) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, strategy, writer_new=proxied(new, proxy))
    try:
        m.publish("DUAL_WRITE")
        before = scenario(m.shop, "t-before")
        if strategy == "outbox":
            m.relay()
        _all_equal(m, before)
        with proxy.down():
            during = scenario(m.shop, "t-down")  # the app answers: every request succeeds
            a = during["customers"][0]
            assert m.shop.get_customer(a) is not None
            if strategy == "sync":
                stats = m.writer.stats.snapshot()
                failures = stats.failures_by_class()
                assert sum(failures.values()) > 0 and stats.secondary_successes > 0
                assert set(failures) <= {"unavailable", "OperationalError"}, failures
                assert "unavailable" in failures
                assert control.repair_queue_depth(m.control, m.name) > 0
            else:
                relay_down = clone(m.relay_new, url=proxy.url_for(new.ref.url))
                with pytest.raises(StoreUnavailableError):
                    from dualwrite.relay import drain

                    drain(m.relay_old, relay_down, m.name, m.writer.mapping_for, control_store=m.control)
                relay_down.dispose()
        # back: the repair path (sync) or the relay (outbox) brings every missed write over
        if strategy == "sync":
            assert m.writer.drain_repairs() > 0
            assert control.repair_queue_depth(m.control, m.name) == 0
        else:
            res = m.relay()
            assert res.mirrored > 0
        _all_equal(m, during)
        _all_equal(m, before)
    finally:
        m.close()


def test_after_write_cutover_the_old_store_down_is_repaired(pg_old: Store, pg_new: Store, databases: Databases,
                                                             proxy: TcpProxy) -> None:
    """New is authoritative; old (the mirror for rollback) is down; the control store lives elsewhere."""
    ctl = databases.store("pgctl", pg_url(databases.pg_db("ctl")))
    m = make_migration(pg_old, pg_new, "sync", control_store=ctl, writer_old=proxied(pg_old, proxy))
    try:
        m.publish("CUTOVER_WRITES")
        t = m.models.customers
        w = m.writer
        k1 = w.insert(t, {"tenant": "x", "name": "one", "balance": Decimal("1.00"), "active": True,
                          "created_at": sa.func.now() if False else _NOW, "version": 1})
        with proxy.down():
            k2 = w.insert(t, {"tenant": "x", "name": "two", "balance": Decimal("2.00"), "active": True,
                              "created_at": _NOW})
            assert w.update(t, k1, {"name": "one!"}) == 1
            assert w.read(t, k2)["name"] == "two"  # reads are served by new
            assert w.stats.snapshot().failures_by_class().get("unavailable", 0) >= 2
        assert control.repair_queue_depth(ctl, m.name) == 2
        assert w.drain_repairs() == 2
        assert m.diffs(t, [k1[0], k2[0]]) == []
        assert m.row("old", t, k1[0])["name"] == "one!"
    finally:
        m.close()


def test_control_store_down_too_repairs_are_buffered_then_queued(pg_old: Store, pg_new: Store,
                                                                proxy: TcpProxy) -> None:
    """Old is the control store and the mirror (after write cutover), and it is down: the keys wait in
    memory and reach the queue as soon as it is back."""
    px_old = proxied(pg_old, proxy)
    m = make_migration(pg_old, pg_new, "sync", writer_old=px_old, control_store=px_old)
    try:
        m.publish("CUTOVER_WRITES")
        t = m.models.customers
        w = m.writer
        with proxy.down():
            k = w.insert(t, {"tenant": "y", "name": "buffered", "balance": Decimal("3.00"), "active": True,
                             "created_at": _NOW})
            assert w.pending_repairs == 1
            assert w.route().phase == "CUTOVER_WRITES"  # the last known phase stays in force
        assert w.retry_pending_repairs() == 1
        assert w.drain_repairs() == 1
        assert m.diffs(t, [k[0]]) == []
    finally:
        m.close()


def test_primary_failure_fails_the_request_and_writes_no_secondary(pg_old: Store, pg_new: Store,
                                                                  proxy: TcpProxy) -> None:
    m = make_migration(pg_old, pg_new, "sync", writer_old=proxied(pg_old, proxy),
                       options=AdapterOptions(background=False, phase_ttl=3600))
    try:
        m.publish("DUAL_WRITE")
        t = m.models.customers
        a = m.shop.signup("t", "Ann")
        # a constraint violation on the primary: the request fails, nothing reaches new
        with pytest.raises(sa.exc.IntegrityError):
            m.writer.insert(t, {"id": a, "tenant": "t", "name": "dup", "balance": 0, "active": True,
                                "created_at": _NOW})
        assert m.row("new", t, a)["name"] == "Ann"
        # the primary unreachable: the request fails, the secondary is not written
        with proxy.down(), pytest.raises(sa.exc.OperationalError):
            m.shop.rename(a, "never")
        assert m.row("new", t, a)["name"] == "Ann"
        assert m.row("old", t, a)["name"] == "Ann"
        prim = m.writer.stats.snapshot().counters["primary"]
        assert any(k.startswith("failure:") for k in prim), prim
        assert m.writer.stats.snapshot().secondary_failures == 0
    finally:
        m.close()


_NOW = __import__("datetime").datetime(2025, 5, 6, 7, 8, 9)


def test_a_hanging_secondary_times_out_and_is_repaired(pg_old: Store, pg_new: Store) -> None:
    """The new store holds the row locked (a stuck transaction): the mirror gives up after the secondary
    timeout, the request succeeds, the failure is counted as 'timeout', and the key is repaired later."""
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=False, phase_ttl=3600,
                                                                      secondary_timeout=0.3))
    try:
        m.publish("DUAL_WRITE")
        t = m.models.customers
        a = m.shop.signup("t", "Lock")
        with pg_new.connect() as blocker:  # the fixture's own pool, not the writer's
            blocker.execute(f"SELECT * FROM {t} WHERE id = %s FOR UPDATE", (a,))
            started = time.monotonic()
            m.shop.rename(a, "Unlocked")  # succeeds although the secondary hangs
            assert time.monotonic() - started < 5
            blocker.rollback()
        assert m.writer.stats.snapshot().failures_by_class() == {"timeout": 1}
        assert m.row("new", t, a)["name"] == "Lock"
        assert m.writer.drain_repairs() == 1
        assert m.row("new", t, a)["name"] == "Unlocked"
    finally:
        m.close()
