"""The ``strict`` and ``async`` write strategies, with faults injected at each point, on real stores.

strict (the request succeeds only if both stores have the write): the secondary down, the secondary timing
out, the authoritative commit failing after the secondary committed, the process SIGKILLed between the two
commits. After each: every acknowledged write is in both stores (after repair), every failed request is in
neither, and the error says which store failed.

async (the request returns after the authoritative commit): the lag is real and measured, a clean close
flushes the queue, a full queue hands keys to the durable repair queue instead of blocking, and queued
writes hold the write fence's barrier.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from app.endpoints import NOW
from app.harness import Migration, TcpProxy, clone, make_migration
from conftest import execute

from dualwrite import control, hooks
from dualwrite import stats as st
from dualwrite.adapter import AdapterOptions
from dualwrite.adapter.strict import NOTES
from dualwrite.errors import StrictWriteError
from dualwrite.spec import MigrationSpec, read_spec_text
from dualwrite.store import Store

TESTS = Path(__file__).resolve().parents[2]


def _opts(**kw: Any) -> AdapterOptions:
    base: dict[str, Any] = {"background": False, "phase_ttl": 0.05, "recheck_delay": 0.05,
                            "read_your_writes_seconds": 0.3, "strict_note_grace": 0.0}
    return AdapterOptions(**{**base, **kw})


def _row(name: str, **kw: Any) -> dict[str, Any]:
    return {"tenant": "t", "name": name, "balance": Decimal("1.00"), "active": True, "created_at": NOW,
            "version": 1, **kw}


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5432)
    p.start()
    yield p
    p.stop()


def _in_neither(m: Migration, table: str, key: int) -> None:
    assert m.row("old", table, key) is None
    assert m.row("new", table, key) is None


def _repair_everything(m: Migration) -> None:
    if m.writer.strict is not None:
        m.writer.strict.sweep()  # notes of strict writes interrupted between their commits -> repair queue
    m.writer.retry_pending_repairs()
    m.writer.drain_repairs()
    assert control.repair_queue_depth(m.control, m.name) == 0


# ---------------------------------------------------------------------------------------------------------
# strict


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new"])
def test_strict_secondary_down_fails_the_request_and_neither_store_keeps_it(
        request: pytest.FixtureRequest, proxy: TcpProxy, pair: str) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, "strict", writer_new=clone(new, url=proxy.url_for(new.ref.url)), options=_opts())
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        (k1,) = w.insert(t, _row("both"))
        assert m.row("old", t, k1)["name"] == "both" and m.row("new", t, k1)["name"] == "both"
        with proxy.down():
            with pytest.raises(StrictWriteError) as failed:
                w.insert(t, _row("never", id=9_000_001))
            assert failed.value.store == "new" and failed.value.role == "secondary"
            assert "failed on the new store" in str(failed.value)
            with pytest.raises(StrictWriteError):
                w.update(t, k1, {"name": "changed"})
            with pytest.raises(StrictWriteError):
                w.delete(t, k1)
            assert m.row("old", t, 9_000_001) is None  # the authoritative store rolled back
            assert m.row("old", t, k1)["name"] == "both"
        _repair_everything(m)
        _in_neither(m, t, 9_000_001)
        assert m.diffs(t, [k1]) == [] and m.row("new", t, k1)["name"] == "both"
        (k2,) = w.insert(t, _row("after"))  # the store is back: strict writes succeed again
        assert m.diffs(t, [k2]) == []
    finally:
        m.close()


def test_strict_secondary_timeout_fails_the_request(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "strict", options=_opts(secondary_timeout=0.5))
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        (k,) = w.insert(t, _row("before"))
        with pg_new.connect() as blocker:  # another transaction holds the row on the secondary
            cur = blocker.cursor()
            cur.execute(f"SELECT * FROM {t} WHERE id = %s FOR UPDATE", (k,))
            started = time.monotonic()
            with pytest.raises(StrictWriteError) as failed:
                w.update(t, k, {"name": "too slow"})
            assert time.monotonic() - started < 5
            assert failed.value.store == "new"
            blocker.rollback()
        window = w.stats.snapshot()
        assert window.failures_by_class().get("timeout", 0) == 1  # a secondary failure...
        assert window.count(st.PRIMARY, "failure:*") == 0  # ...not an authoritative one (it rolled back on purpose)
        _repair_everything(m)
        assert m.row("old", t, k)["name"] == "before" and m.row("new", t, k)["name"] == "before"
    finally:
        m.close()


def test_strict_authoritative_commit_failure_restores_the_secondary(pg_old: Store, pg_new: Store,
                                                                    fetch: Any) -> None:
    """A deferred constraint makes the authoritative COMMIT itself fail, after the secondary committed."""
    m = make_migration(pg_old, pg_new, "strict", options=_opts(strict_note_grace=60.0))
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        execute(pg_old, f"CREATE FUNCTION {t}_reject() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF NEW.name = 'reject-at-commit' THEN RAISE EXCEPTION 'rejected at commit'; END IF; "
                        "RETURN NULL; END $$",
                f"CREATE CONSTRAINT TRIGGER {t}_reject AFTER INSERT OR UPDATE ON {t} DEFERRABLE INITIALLY "
                f"DEFERRED FOR EACH ROW EXECUTE FUNCTION {t}_reject()")
        (k,) = w.insert(t, _row("kept"))
        with pytest.raises(StrictWriteError) as failed:
            w.insert(t, _row("reject-at-commit", id=9_000_002))
        assert failed.value.store == "old" and failed.value.role == "authoritative"
        assert "restored" in str(failed.value)
        assert w.stats.snapshot().count(st.PRIMARY, "failure:*") == 1  # the authoritative commit did fail
        _in_neither(m, t, 9_000_002)
        with pytest.raises(StrictWriteError):
            w.update(t, k, {"name": "reject-at-commit"})
        assert m.row("old", t, k)["name"] == "kept" and m.row("new", t, k)["name"] == "kept"
        m.writer.strict.flush()  # type: ignore[union-attr]
        assert control.repair_queue_depth(m.control, m.name) == 0  # compensated at once: nothing left to repair
        assert fetch(pg_new, f"SELECT count(*) FROM {NOTES} WHERE migration = '{m.name}'") == [(0,)]
    finally:
        m.close()


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new"])
def test_strict_killed_between_the_commits_is_repaired(request: pytest.FixtureRequest, tmp_path: Path,
                                                       pair: str, fetch: Any) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, "strict", options=_opts())
    try:
        m.publish("DUAL_WRITE")
        t = m.models.customers
        prefix = t.removesuffix("_customers")
        hook_file = tmp_path / "hooks.json"
        hook_file.write_text(json.dumps({"strict.between_commits": {"action": "kill"}}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        env.pop(hooks.ENV, None)
        child = subprocess.run([sys.executable, str(TESTS / "app" / "strict_child.py"), prefix, old.ref.url,
                                new.ref.url, str(hook_file), "9000003", "9000004"],
                               capture_output=True, text=True, env=env, timeout=120, check=False)
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert child.stdout.splitlines() == ["ACK 9000003"]
        assert "strict.between_commits kill" in (tmp_path / "hooks.json.fired").read_text()
        # the half state the crash left: the secondary committed, the authoritative store did not, and the
        # note committed with the secondary's row says so
        assert m.row("new", t, 9_000_004) is not None and m.row("old", t, 9_000_004) is None
        assert fetch(new, f"SELECT count(*) FROM {NOTES} WHERE migration = '{m.name}' AND key_json = '[9000004]'"
                     ) == [(1,)]
        time.sleep(1.2)  # the child's note becomes due
        _repair_everything(m)
        _in_neither(m, t, 9_000_004)  # the failed request is in neither store
        assert m.diffs(t, [9_000_003]) == [] and m.row("new", t, 9_000_003)["name"] == "acknowledged"
    finally:
        m.close()


# ---------------------------------------------------------------------------------------------------------
# async


@pytest.fixture
def slow_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every background mirror batch takes 0.4 s more (a slow secondary)."""
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps({"mirror.before_commit": {"action": "delay", "seconds": 0.4}}))
    monkeypatch.setenv(hooks.ENV, str(path))


@pytest.mark.usefixtures("slow_mirror")
def test_async_returns_before_the_secondary_measures_the_lag_and_close_flushes(
        pg_old: Store, pg_new: Store, fetch: Any) -> None:
    m = make_migration(pg_old, pg_new, "async", options=_opts(async_workers=1, async_batch=2))
    closed = False
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        started = time.monotonic()
        keys = [w.insert(t, _row(f"n{i}"))[0] for i in range(6)]
        assert time.monotonic() - started < 1.0  # six requests did not wait for 3 x 0.4 s of mirroring
        assert m.row("new", t, keys[-1]) is None  # the secondary lags...
        time.sleep(0.3)
        assert w.lagged is not None
        depth, age = w.lagged.depth()
        assert depth > 0 and age > 0.2  # ...and the lag is measured
        w.lagged.publish_gauges()  # the gauges thread does this every 0.25 s
        window = w.stats.snapshot()
        assert window.gauges[st.ASYNC_DEPTH] > 0 and window.gauges[st.ASYNC_AGE] > 0.2
        w.close()  # a clean exit flushes the queue
        closed = True
        ids = ", ".join(str(k) for k in keys)
        assert fetch(pg_new, f"SELECT count(*) FROM {t} WHERE id IN ({ids})") == [(6,)]
        assert control.repair_queue_depth(m.control, m.name) == 0
    finally:
        if not closed:
            m.close()


@pytest.mark.usefixtures("slow_mirror")
def test_async_full_queue_goes_to_the_repair_queue_without_blocking(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "async", options=_opts(async_workers=1, async_batch=1, async_queue_size=2))
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        slowest = 0.0
        keys = []
        for i in range(8):
            started = time.monotonic()
            keys.append(w.insert(t, _row(f"n{i}"))[0])
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.35  # no request waited for the slow secondary
        assert w.lagged is not None and w.lagged.overflowed >= 5
        assert w.stats.snapshot().failures_by_class().get("queue_full", 0) >= 5  # the gate sees them
        assert control.repair_queue_depth(m.control, m.name) >= 5
        assert w.lagged.flush(timeout=10)
        _repair_everything(m)
        assert m.diffs(t, keys) == []
    finally:
        m.close()


@pytest.mark.usefixtures("slow_mirror")
def test_async_queued_writes_hold_the_write_fence(pg_old: Store, pg_new: Store) -> None:
    """The barrier of a fence epoch passes only once the queue has mirrored what was routed before it."""
    m = make_migration(pg_old, pg_new, "async", options=_opts(async_workers=1, async_batch=1))
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        keys = [w.insert(t, _row(f"n{i}"))[0] for i in range(3)]
        m.publish("CUTOVER_READS", overrides={"fence": {"all": True}})
        assert not control.barrier(m.control, m.name, m.epoch).passed  # still mirroring the earlier writes
        assert w.lagged is not None and w.lagged.flush(timeout=10)
        w.phase.refresh(force=True)
        assert control.barrier(m.control, m.name, m.epoch).passed
        assert m.diffs(t, keys) == []  # everything routed before the fence is on the new store
    finally:
        m.close()


# ---------------------------------------------------------------------------------------------------------
# per-table strategies


def test_per_table_strategies_strict_money_async_hot(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "sync", options=_opts())
    try:
        m.publish("DUAL_WRITE")
        doc = m.spec.model_dump(by_alias=True)
        doc["tables"][0]["strategy"], doc["tables"][1]["strategy"] = "strict", "async"
        spec = MigrationSpec.model_validate(doc)
        assert spec.strategy_of(m.models.customers).value == "strict"
        assert spec.strategy_of(m.models.orders).value == "async"
    finally:
        m.close()
    from dualwrite.adapter import DualWriter

    w = DualWriter(spec, m.old, m.new, control_store=m.control, options=_opts())
    try:
        w.phase.refresh(force=True)
        (c,) = w.insert(m.models.customers, _row("money"))
        (o,) = w.insert(m.models.orders, {"customer_id": c, "tenant": "t", "total": Decimal("5.00"),
                                          "status": "open", "version": 1})
        assert w.read_row_direct(m.models.customers, "new", (c,)) is not None  # strict: there at once
        assert w.lagged is not None and w.lagged.flush(timeout=10)
        assert w.read_row_direct(m.models.orders, "new", (o,)) is not None
        assert w.strict is not None
    finally:
        w.close()


BASE = """
name: m1
old: a
new: b
strategy: {strategy}
tables:
  - source: accounts
    strategy: {table}
  - source: orders
"""


@pytest.mark.parametrize(("strategy", "table", "message"), [
    ("sync", "triggers", "a table's own strategy is strict, sync or async"),
    ("outbox", "strict", "needs the relay for every table"),
    ("triggers", "async", "needs the relay for every table"),
])
def test_check_refuses_unsafe_strategy_mixes(strategy: str, table: str, message: str) -> None:
    doc = read_spec_text(BASE.format(strategy=strategy, table=table))
    assert doc.spec is None
    assert any(message in str(p) for p in doc.problems), doc.problems


def test_check_accepts_inline_strategy_mixes() -> None:
    doc = read_spec_text(BASE.format(strategy="sync", table="strict"))
    assert doc.problems == [] and doc.spec is not None
    assert doc.spec.strategy_of("accounts").value == "strict" and doc.spec.strategy_of("orders").value == "sync"


# ---------------------------------------------------------------------------------------------------------
# the ORM hook and the asyncio adapter


def test_orm_strict_secondary_down_and_commit_failure(pg_old: Store, pg_new: Store, proxy: TcpProxy) -> None:
    m = make_migration(pg_old, pg_new, "strict", writer_new=clone(pg_new, url=proxy.url_for(pg_new.ref.url)),
                       options=_opts(strict_note_grace=60.0))
    C = m.models.Customer
    t = m.models.customers
    try:
        m.publish("DUAL_WRITE")
        with m.sessions() as s, s.begin():
            c = C(tenant="orm", name="both", created_at=NOW, version=1)
            s.add(c)
        assert m.row("new", t, c.id)["name"] == "both"  # in both stores when commit() returned
        with proxy.down(), pytest.raises(StrictWriteError) as failed, m.sessions() as s, s.begin():
            s.add(C(id=9_000_005, tenant="orm", name="never", created_at=NOW, version=1))
        assert failed.value.store == "new"
        _in_neither(m, t, 9_000_005)
        execute(pg_old, f"CREATE FUNCTION {t}_reject() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF NEW.name = 'reject-at-commit' THEN RAISE EXCEPTION 'rejected at commit'; END IF; "
                        "RETURN NULL; END $$",
                f"CREATE CONSTRAINT TRIGGER {t}_reject AFTER INSERT OR UPDATE ON {t} DEFERRABLE INITIALLY "
                f"DEFERRED FOR EACH ROW EXECUTE FUNCTION {t}_reject()")
        with pytest.raises(Exception, match="rejected at commit"), m.sessions() as s, s.begin():
            s.add(C(id=9_000_006, tenant="orm", name="reject-at-commit", created_at=NOW, version=1))
        _in_neither(m, t, 9_000_006)  # the other store was restored after the failed commit
        _repair_everything(m)
        _in_neither(m, t, 9_000_005)
        assert m.diffs(t, [c.id]) == []
    finally:
        m.close()


def test_orm_async_strategy_mirrors_in_the_background(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "async", options=_opts())
    try:
        m.publish("DUAL_WRITE")
        cid = m.shop.signup("orm", "queued")
        m.shop.rename(cid, "renamed")
        assert m.writer.lagged is not None and m.writer.lagged.flush(timeout=10)
        assert m.row("new", m.models.customers, cid)["name"] == "renamed"
    finally:
        m.close()


async def test_aio_strict_and_async(pg_old: Store, pg_new: Store, proxy: TcpProxy) -> None:
    import asyncio

    from dualwrite.adapter import AsyncDualWriter

    m = make_migration(pg_old, pg_new, "strict", writer_new=clone(pg_new, url=proxy.url_for(pg_new.ref.url)),
                       options=_opts())
    aw = AsyncDualWriter(m.writer)
    t = m.models.customers
    try:
        m.publish("DUAL_WRITE")
        (k,) = await aw.insert(t, _row("both"))
        assert m.row("new", t, k)["name"] == "both"
        proxy.stop()
        try:
            with pytest.raises(StrictWriteError) as failed:
                await aw.insert(t, _row("never", id=9_000_007))
        finally:
            proxy.start()
        assert failed.value.store == "new"
        await asyncio.to_thread(_repair_everything, m)
        _in_neither(m, t, 9_000_007)
    finally:
        await aw.close()
        m.close()
    m = make_migration(pg_old, pg_new, "async", options=_opts())
    aw = AsyncDualWriter(m.writer)
    try:
        m.publish("DUAL_WRITE")
        (k,) = await aw.insert(m.models.customers, _row("later"))
        assert m.writer.lagged is not None and await asyncio.to_thread(m.writer.lagged.flush, 10)
        assert m.row("new", m.models.customers, k)["name"] == "later"
    finally:
        await aw.close()
        m.close()


def test_async_instance_that_died_with_a_queue_holds_the_gate(pg_old: Store, pg_new: Store) -> None:
    """A clean close is told apart from a crash: the gate names the instance that may have lost its queue."""
    from dualwrite import gates
    from dualwrite.adapter import DualWriter
    from dualwrite.spec import Gates

    m = make_migration(pg_old, pg_new, "async", options=_opts())
    crashed = DualWriter(m.spec, m.old, m.new, control_store=m.control, options=_opts(), instance_id="app-2:crashed")
    try:
        m.publish("DUAL_WRITE")
        crashed.phase.refresh(force=True)
        t = m.models.customers
        m.writer.insert(t, _row("clean"))
        crashed.insert(t, _row("lost?"))
        for w in (m.writer, crashed):
            assert w.lagged is not None
            w.lagged.publish_gauges()  # the gauges of this instance's window
        assert crashed.flush_stats()  # its last window, then it "dies" (no close)
        m.writer.close()  # the clean one: flushes its queue and says so in its last window
        assert st.unclean_async_instances(m.control, m.name, 300, quiet_seconds=0) == ["app-2:crashed"]
        facts = gates.read_traffic(m.control, m.name, 300)
        assert facts.async_lag_seconds is not None
        facts.async_unclean = st.unclean_async_instances(m.control, m.name, 300, quiet_seconds=0)
        metric = {x.name: x for x in gates.traffic_metrics(facts, Gates())}["async_lag_seconds"]
        assert metric.verdict.value == "fail" and "app-2:crashed" in metric.detail
    finally:
        crashed.close()
        m.close()


def test_strict_concurrent_writers_of_the_same_keys_leave_both_stores_equal(pg_old: Store, pg_new: Store) -> None:
    """No version guard: the authoritative row lock, held across both commits, orders the secondary writes."""
    import threading

    m = make_migration(pg_old, pg_new, "strict", options=_opts(strict_note_grace=60.0))
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        keys = [w.insert(t, _row(f"k{i}"))[0] for i in range(4)]
        errors: list[BaseException] = []

        def hammer(n: int) -> None:
            try:
                for i in range(40):
                    k = keys[(n + i) % len(keys)]
                    w.update(t, k, {"name": f"w{n}-{i}", "version": 1})  # the version does not even move
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert m.diffs(t, keys) == []
    finally:
        m.close()


@pytest.fixture
def my_proxy() -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 3306)
    p.start()
    yield p
    p.stop()


def test_strict_after_write_cutover_with_a_mariadb_secondary(my_old: Store, pg_new: Store, my_proxy: TcpProxy,
                                                             fetch: Any) -> None:
    """New (PostgreSQL) authoritative, old (MariaDB) the secondary: the note and the row in one transaction."""
    m = make_migration(my_old, pg_new, "strict", writer_old=clone(my_old, url=my_proxy.url_for(my_old.ref.url)),
                       options=_opts(strict_note_grace=60.0))
    try:
        m.publish("CUTOVER_WRITES")
        t, w = m.models.customers, m.writer
        (k,) = w.insert(t, _row("both"))
        assert m.row("old", t, k)["name"] == "both"
        assert w.update(t, k, {"name": "again"}) == 1 and w.delete(t, k) == 1
        assert m.row("old", t, k) is None and m.row("new", t, k) is None
        with my_proxy.down(), pytest.raises(StrictWriteError) as failed:
            w.insert(t, _row("never", id=9_000_008))
        assert failed.value.store == "old" and failed.value.role == "secondary"
        _in_neither(m, t, 9_000_008)
        w.strict.flush()  # type: ignore[union-attr]
        assert fetch(my_old, f"SELECT count(*) FROM {NOTES} WHERE migration = '{m.name}'") == [(0,)]
    finally:
        m.close()


async def test_async_orm_strict(pg_old: Store, pg_new: Store) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from dualwrite.adapter import install_async

    m = make_migration(pg_old, pg_new, "strict", options=_opts())
    engine = create_async_engine(pg_old.ref.url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install_async(maker, m.writer)
    try:
        m.publish("DUAL_WRITE")
        async with maker() as s:
            c = m.models.Customer(tenant="orm", name="async strict", created_at=NOW, version=1)
            s.add(c)
            await s.commit()
        assert m.row("new", m.models.customers, c.id)["name"] == "async strict"  # before commit() returned
    finally:
        await engine.dispose()
        m.close()


async def test_a_strict_or_async_migration_runs_without_a_relay(dw: Any, temporal_client: Any, pg_old: Store,
                                                                pg_new: Store, table_name: str) -> None:
    """strict and async write the other store from the adapter: the migration starts no relay for them and
    advances like sync (real Temporal dev server, the session's worker)."""
    from conftest import create_pg, spec_for

    from workflows.relay import relay_workflow_id

    create_pg(pg_old, table_name, 50)
    create_pg(pg_new, table_name, 0)
    name = f"inline-{table_name[-6:]}"
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="async"))
    try:
        st_ = await dw.advance_to(handle, "BACKFILL")
        assert "relay_started" not in st_.counters, st_.counters
        with pytest.raises(Exception):  # noqa: B017, PT011 - no relay workflow exists at all
            await temporal_client.get_workflow_handle(relay_workflow_id(name)).describe()
    finally:
        await handle.terminate("test over")


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new"])
def test_strict_commit_whose_reply_was_lost_is_a_success_not_a_failure(
        request: pytest.FixtureRequest, pair: str, fetch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The authoritative COMMIT commits but its reply never arrives (a reset connection): the driver raises.
    Both stores have the write, so the request succeeded; telling the application it failed (and
    restoring the other store from the committed row) left a write in both stores that the application
    was told failed (chaos mariadb-pg strict, CUTOVER_WRITES: 1 of 1,429)."""
    import sqlalchemy as sa

    old_name, new_name = pair.split(">")
    old, new = request.getfixturevalue(old_name), request.getfixturevalue(new_name)
    m = make_migration(old, new, "strict", options=_opts(strict_note_grace=60.0))
    real_commit = sa.engine.Connection.commit

    def commit_then_lose_the_reply(self: sa.engine.Connection) -> None:
        real_commit(self)
        raise sa.exc.OperationalError("COMMIT", {}, ConnectionResetError("connection reset by peer"))

    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        with monkeypatch.context() as patch:
            patch.setattr(sa.engine.Connection, "commit", commit_then_lose_the_reply)
            (k,) = w.insert(t, _row("committed, reply lost", id=9_000_021))  # no exception: it committed
        assert m.row("old", t, k)["name"] == "committed, reply lost"
        assert m.row("new", t, k)["name"] == "committed, reply lost"
        w.strict.flush()  # type: ignore[union-attr]
        assert control.repair_queue_depth(m.control, m.name) == 0
        for store in (old, new):  # the secondary's note and the authoritative marker are both gone
            assert fetch(store, f"SELECT count(*) FROM {NOTES} WHERE migration = '{m.name}'") == [(0,)]
    finally:
        m.close()


def test_strict_write_on_postgresql_takes_its_commit_marker_without_a_round_trip(pg_old: Store, pg_new: Store) -> None:
    """The marker that resolves a lost COMMIT reply (the transaction id) rides in the write's own RETURNING
    list: a separate ``SELECT txid_current()`` cost a round trip per request (strict_p50_x 2.29 -> goal 2.2),
    and an update, an insert and a lost reply still resolve with it."""
    import sqlalchemy as sa

    m = make_migration(pg_old, pg_new, "strict", options=_opts(strict_note_grace=60.0))
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        (k,) = w.insert(t, _row("marked", id=9_000_041))
        w.update(t, k, {"name": "marked again"})
        assert m.row("new", t, k)["name"] == "marked again"
        assert [s for s in seen if "txid_current" in s and not s.lstrip().upper().startswith(("INSERT", "UPDATE"))] \
            == [], seen
        assert any("txid_current()" in s for s in seen if s.startswith("UPDATE")), seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
        m.close()


def test_strict_delete_of_a_key_being_inserted_leaves_both_stores_equal(pg_old: Store, pg_new: Store,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's DELETE of a row another transaction is inserting neither waits nor deletes: its strict
    write once deleted the row in the secondary after the insert's secondary commit, and the insert then
    committed - kept by the authoritative store, not the secondary, both acknowledged, no note to repair it."""
    import threading

    m = make_migration(pg_old, pg_new, "strict", options=_opts(strict_note_grace=60.0))
    held, release = threading.Event(), threading.Event()
    real = hooks.point

    def point(name: str, **context: Any) -> None:
        if name == "strict.between_commits" and threading.current_thread().name == "inserter":
            held.set()
            release.wait(10)
        real(name, **context)

    try:
        m.publish("DUAL_WRITE")
        t, w = m.models.customers, m.writer
        monkeypatch.setattr(hooks, "point", point)
        errors: list[BaseException] = []
        done: list[Any] = []

        def run(fn: Any) -> None:
            try:
                done.append(fn())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        inserter = threading.Thread(target=run, args=(lambda: w.insert(t, _row("raced", id=9_000_077)),),
                                    name="inserter")
        inserter.start()
        assert held.wait(10)  # in the secondary, the authoritative transaction still open
        deleter = threading.Thread(target=run, args=(lambda: w.delete(t, 9_000_077),), name="deleter")
        deleter.start()
        deleter.join(0.3)
        release.set()
        inserter.join(10)
        deleter.join(10)
        assert errors == [] and len(done) == 2
        assert m.diffs(t, [9_000_077]) == []
    finally:
        m.close()


async def test_aio_strict_delete_of_a_key_being_inserted_leaves_both_stores_equal(pg_old: Store,
                                                                                  pg_new: Store) -> None:
    """The asyncio adapter's strict commit: a delete of a row another transaction is inserting (PostgreSQL's
    DELETE neither waits nor deletes) must reach the secondary after that insert, as it commits after it."""
    import asyncio
    import threading

    from dualwrite.adapter import AsyncDualWriter

    m = make_migration(pg_old, pg_new, "strict", options=_opts(strict_note_grace=60.0))
    aw = AsyncDualWriter(m.writer)
    t = m.models.customers
    assert m.writer.strict is not None
    real = m.writer.strict.prepare
    held, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def prepare(*args: Any, **kwargs: Any) -> Any:
        ticket = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the insert: in the secondary, its authoritative transaction still open
            held.set()
            release.wait(10)
        return ticket

    try:
        m.publish("DUAL_WRITE")
        m.writer.strict.prepare = prepare  # type: ignore[method-assign]
        inserting = asyncio.create_task(aw.insert(t, _row("raced", id=9_000_078)))
        assert await asyncio.to_thread(held.wait, 10)
        deleting = asyncio.create_task(aw.delete(t, 9_000_078))
        await asyncio.sleep(0.3)
        release.set()
        await asyncio.gather(inserting, deleting)
        assert m.diffs(t, [9_000_078]) == []
    finally:
        release.set()
        m.close()
