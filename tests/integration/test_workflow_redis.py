"""PostgreSQL -> Redis through every phase ([T2-6]): the real Temporal dev server, a worker of this test's
own (its stores resolve to the test's private Redis), real PostgreSQL and a private ``redis-server`` with
persistence on (the machine's shared Redis keeps nothing on disk and is refused as authoritative).

An application writes through the adapter (strategy ``sync``) the whole time: the old store first until
write cutover, Redis first after it, the other store mirrored right after. What a user cares about is
asserted at the end: every acknowledged write is in both stores, both stores hold the same rows, and the
rollback from CUTOVER_WRITES lost nothing. A Redis wiped mid-migration (FLUSHALL) is found by
verification, blocks the cutover, and is repaired by re-copying.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import NO_TRAFFIC_GATES, Databases, MigrationDriver, create_pg, fast_tuning, fetch_all, pg_url
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.core import DualwriteActivities
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef, StoreResolver, env_var_for
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.keyvalue.intact import mark_intact
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from worker import build_worker
from workflows.models import AbortCleanupInput, GateInput, Phase, RetireInput

ROWS = 300


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-mig")) as server:
        yield server


@pytest.fixture(scope="module")
def kv_queue() -> str:
    return f"dualwrite-redis-{secrets.token_hex(3)}"


@pytest.fixture
async def kv_worker(temporal_client: Client, databases: Databases, private_redis: RedisServer, kv_queue: str,
                    tmp_path: Path) -> AsyncIterator[StoreResolver]:
    """A worker whose store 'kv' is the private Redis and 'pgold' the session's old PostgreSQL database."""
    config = tmp_path / "dualwrite.yaml"
    config.write_text("stores: {}\n")
    resolver = StoreResolver(config_file=config, environ={env_var_for("pgold"): pg_url(databases.pg_db("old")),
                                                          env_var_for("kv"): private_redis.url})
    acts = DualwriteActivities(resolver)
    async with build_worker(temporal_client, acts, task_queue=kv_queue, max_activities=8, shutdown_seconds=5):
        yield resolver
    acts.close()


def redis_spec(name: str, table: str, strategy: str = "sync", **kw: Any) -> MigrationSpec:
    return MigrationSpec.model_validate({
        "name": name, "old": "pgold", "new": "kv", "strategy": strategy,
        # the adapter's traffic is real here: latency is not what this test is about (sync writes two stores)
        "gates": {**NO_TRAFFIC_GATES, "p99_latency_increase": 100.0},
        "tables": [{"source": table, "batch_size": 100, "version_column": "version",
                    "redis": {"key": "item:{id}", "value": "hash", "prefix": f"{name}:"}}], **kw})


class App:
    """An application writing through the adapter in a thread: inserts, updates and deletes by key. Every
    acknowledged write is remembered (the row the application last wrote, or None when deleted)."""

    def __init__(self, writer: DualWriter, table: str) -> None:
        self.writer, self.table = writer, table
        self.acked: dict[int, dict[str, Any] | None] = {}
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.count = 0
        self.rnd = random.Random(7)

    def one(self) -> None:
        k = self.rnd.randint(1, ROWS + 100)
        self.count += 1
        n = self.count
        roll = self.rnd.random()
        try:
            if roll < 0.15:
                self.writer.delete(self.table, k)
                self.acked[k] = None
                return
            row = {"id": k, "name": f"app-{n}", "amount": Decimal(n % 1000) / 4,
                   "updated_at": dt.datetime(2025, 1, 1) + dt.timedelta(seconds=n)}
            self.writer.upsert(self.table, row)
            self.acked[k] = row
        except Exception as exc:  # noqa: BLE001 - a refused write is not acknowledged: the test reports it
            self.failed.append(f"{type(exc).__name__}: {exc}")
            self.acked.pop(k, None)

    def run(self) -> None:
        while not self.stop.is_set():
            self.one()
            self.stop.wait(0.01)


def pg_rows(store: Store, table: str) -> dict[int, tuple[Any, ...]]:
    return {int(r[0]): (r[1], Decimal(r[2]) if r[2] is not None else None, r[3])  # type: ignore[call-overload]
            for r in fetch_all(store, f"SELECT id, name, amount, updated_at FROM {table}")}


def redis_rows(url: str, prefix: str) -> dict[int, tuple[Any, ...]]:
    r = redis.Redis.from_url(url, decode_responses=True)
    out: dict[int, tuple[Any, ...]] = {}
    for key in r.scan_iter(match=f"{prefix}item:*"):
        h = r.hgetall(key)
        out[int(key.rsplit(":", 1)[1])] = (h.get("name"), Decimal(h["amount"]) if "amount" in h else None,
                                           dt.datetime.fromisoformat(h["updated_at"]) if "updated_at" in h else None)
    return out


def assert_acknowledged(app: App, rows: dict[int, tuple[Any, ...]], where: str) -> None:
    lost = {k: w for k, w in app.acked.items()
            if (rows.get(k) is None) != (w is None) or (w is not None and rows[k][0] != w["name"])}
    assert not lost, f"{where} lacks {len(lost)} acknowledged write(s), e.g. {list(lost.items())[:3]}"


async def verify(dw: MigrationDriver, handle: Any, reason: str) -> Any:
    before = (await dw.status(handle)).counters["verifications"]
    assert (await dw.update(handle, "verify", by="pytest", reason=reason)).ok
    st = await dw.wait(handle, lambda s: s.counters["verifications"] > before, f"verification ({reason})",
                       timeout=120)
    return st.last_verification


async def test_postgresql_to_redis_through_every_phase_with_writes_through_the_adapter(
        dw: MigrationDriver, kv_worker: StoreResolver, kv_queue: str, databases: Databases,
        private_redis: RedisServer) -> None:
    name = f"kv-{secrets.token_hex(3)}"
    table = f"kv_items_{secrets.token_hex(3)}"
    old = Store(StoreRef("pgold", pg_url(databases.pg_db("old"))))
    create_pg(old, table, ROWS)
    spec = redis_spec(name, table, "sync")
    writer = DualWriter.from_resolver(spec, kv_worker, options=AdapterOptions(phase_ttl=0.05, pool_size=2,
                                                                              shadow_after_write_cutover=True))
    app = App(writer, table)
    thread = threading.Thread(target=app.run, daemon=True)
    handle = await dw.start(spec, task_queue=kv_queue, tuning=fast_tuning())
    try:
        thread.start()
        await dw.advance_to(handle, "BACKFILL", timeout=120)
        await dw.wait(handle, lambda s: bool(s.tables) and all(t.done for t in s.tables), "backfill done", 120)
        await dw.advance_to(handle, "SHADOW_READ")
        for k in range(1, 60):  # shadow reads: PostgreSQL serves, Redis is compared field by field
            writer.read(table, k)
        v = await verify(dw, handle, "before cutover")
        assert v.ok and v.rows_compared >= ROWS * 0.8 and v.direction == "old->new", v
        await dw.advance_to(handle, "CUTOVER_READS")
        assert writer.read(table, 1) is not None or app.acked.get(1, {}) is None  # served by Redis now
        gate = await dw.update(handle, "advance", by="pytest", reason="go", dry_run=True)
        durable = next(m for m in gate.gate.metrics if m.name == "new_store_durable")
        assert durable.ok and "appendonly" in durable.detail, durable
        await dw.advance_to(handle, "CUTOVER_WRITES")
        await asyncio.sleep(1.5)  # Redis first now, PostgreSQL mirrored back by the adapter
        assert writer.route().authoritative.value == "new"
        v = await verify(dw, handle, "after write cutover")
        assert v.ok and v.direction == "new->old", v

        # rollback from CUTOVER_WRITES: PostgreSQL becomes authoritative again and holds every write
        res = await dw.update(handle, "rollback", to="CUTOVER_READS", by="pytest", reason="drill")
        assert res.ok, res.message
        await dw.settled(handle, "CUTOVER_READS")
        await asyncio.sleep(1.0)
        app.stop.set()
        await asyncio.to_thread(thread.join)
        assert writer.lagged is None or await asyncio.to_thread(writer.lagged.flush, 10.0)
        assert_acknowledged(app, pg_rows(old, table), "PostgreSQL after the rollback")
        v = await verify(dw, handle, "after rollback")
        assert v.ok and v.repaired == 0, v

        # forward again, to the end
        app.stop.clear()
        thread = threading.Thread(target=app.run, daemon=True)
        thread.start()
        await dw.advance_to(handle, "CUTOVER_WRITES")
        await asyncio.sleep(1.0)
        app.stop.set()
        await asyncio.to_thread(thread.join)
        assert writer.lagged is None or await asyncio.to_thread(writer.lagged.flush, 10.0)
        v = await verify(dw, handle, "final")
        assert v.ok and v.repaired == 0 and v.rows_compared > 0, v
        prefix = f"{name}:"
        assert pg_rows(old, table) == redis_rows(private_redis.url, prefix)
        assert_acknowledged(app, redis_rows(private_redis.url, prefix), "Redis")
        assert_acknowledged(app, pg_rows(old, table), "PostgreSQL (reverse mirror)")
        assert not app.failed, app.failed[:3]
        assert app.count > 100
        st = await dw.advance_to(handle, "DONE", timeout=120)
        assert st.phase == "DONE"
    finally:
        app.stop.set()
        if thread.is_alive():
            await asyncio.to_thread(thread.join)
        writer.close()
        old.dispose()
        if (await dw.status(handle)).phase != "DONE":
            await handle.terminate("test over")


async def test_a_wiped_redis_is_found_blocks_the_cutover_and_is_recopied(
        dw: MigrationDriver, kv_worker: StoreResolver, kv_queue: str, databases: Databases,
        private_redis: RedisServer) -> None:
    name = f"kvw-{secrets.token_hex(3)}"
    table = f"kv_wiped_{secrets.token_hex(3)}"
    old = Store(StoreRef("pgold", pg_url(databases.pg_db("old"))))
    create_pg(old, table, ROWS)
    spec = redis_spec(name, table)
    handle = await dw.start(spec, task_queue=kv_queue, tuning=fast_tuning())
    try:
        await dw.advance_to(handle, "BACKFILL", timeout=120)
        await dw.wait(handle, lambda s: bool(s.tables) and all(t.done for t in s.tables), "backfill done", 120)
        await dw.advance_to(handle, "SHADOW_READ")
        redis.Redis.from_url(private_redis.url).flushall()  # a restart without persistence, say

        # the backfill's verification is fresh, but it was made before the wipe: the gate notices the wipe
        refused = await dw.update(handle, "advance", by="pytest", reason="go")
        assert not refused.ok and refused.phase == "SHADOW_READ", refused.message
        assert refused.gate is not None
        intact = next(m for m in refused.gate.metrics if m.name == "new_store_intact")
        assert not intact.ok and "dualwrite verify" in intact.detail, intact

        v = await verify(dw, handle, "repair the wiped store")  # found by verification, never a pass
        assert v.verdict == f"repaired {v.repaired}" and v.repaired >= ROWS * 0.9, v
        refused = await dw.update(handle, "advance", by="pytest", reason="go")
        assert not refused.ok, "a verification that had to repair is no proof: the cutover stays blocked"
        assert len(redis_rows(private_redis.url, f"{name}:")) == ROWS
        v = await verify(dw, handle, "after the repair")
        assert v.ok and v.repaired == 0, v
        res = await dw.update(handle, "advance", by="pytest", reason="go")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
    finally:
        old.dispose()
        await handle.terminate("test over")


# -- the migration's own keys in Redis ([T2-6]): activities run here directly, no workflow needed -----------


def _activities(databases: Databases, private_redis: RedisServer, tmp_path: Path) -> DualwriteActivities:
    config = tmp_path / "dualwrite.yaml"
    config.write_text("stores: {}\n")
    return DualwriteActivities(StoreResolver(config_file=config, environ={
        env_var_for("pgold"): pg_url(databases.pg_db("old")), env_var_for("kv"): private_redis.url}))


def test_abort_and_cleanup_remove_the_migrations_own_keys_from_redis(
        databases: Databases, private_redis: RedisServer, tmp_path: Path) -> None:
    """``__dualwrite__:<migration>:*`` (the intact marker and whatever else dualwrite keeps there) goes with
    the migration; another migration's keys, and the migrated rows, stay."""
    acts = _activities(databases, private_redis, tmp_path)
    old = Store(StoreRef("pgold", pg_url(databases.pg_db("old"))))
    r = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        for how in ("abort", "cleanup"):
            name, table = f"kvm-{how}-{secrets.token_hex(3)}", f"kv_marks_{secrets.token_hex(3)}"
            create_pg(old, table, 3)
            spec = redis_spec(name, table)
            mark_intact(acts.stores.store(spec.new), name)
            r.set(f"__dualwrite__:{name}:other", "x")
            r.set(f"__dualwrite__:{name}x:intact", "intact")  # another migration, its name a prefix of ours
            r.hset(f"{name}:item:1", mapping={"id": "1", "name": "kept"})
            if how == "abort":
                ActivityEnvironment().run(acts.abort.abort_cleanup, AbortCleanupInput(spec=spec))
            else:
                ActivityEnvironment().run(acts.cleanup.retire_old_store, RetireInput(spec=spec, stamp="t26"))
            assert sorted(r.scan_iter(match=f"__dualwrite__:{name}:*")) == [], how
            assert r.get(f"__dualwrite__:{name}x:intact") == "intact", how
            assert r.hget(f"{name}:item:1", "name") == "kept", how
    finally:
        old.dispose()
        acts.close()


def test_the_intact_gate_applies_from_cutover_reads_through_cleanup(
        databases: Databases, private_redis: RedisServer, tmp_path: Path) -> None:
    """A wiped Redis blocks the gates into CUTOVER_READS .. CLEANUP only: before, it is repaired by copying
    again; after CLEANUP the marker is gone with the migration's other keys (and the old store is retired:
    nothing to copy again from)."""
    acts = _activities(databases, private_redis, tmp_path)
    old = Store(StoreRef("pgold", pg_url(databases.pg_db("old"))))
    name, table = f"kvg-{secrets.token_hex(3)}", f"kv_gate_{secrets.token_hex(3)}"
    try:
        create_pg(old, table, 3)
        spec = redis_spec(name, table)
        new = acts.stores.store(spec.new)
        r = redis.Redis.from_url(private_redis.url, decode_responses=True)
        seen: dict[Phase, bool] = {}
        for frm, to in ((Phase.PREPARE, Phase.DUAL_WRITE), (Phase.DUAL_WRITE, Phase.BACKFILL),
                        (Phase.BACKFILL, Phase.SHADOW_READ), (Phase.CUTOVER_WRITES, Phase.CLEANUP),
                        (Phase.CLEANUP, Phase.DONE)):
            mark_intact(new, name)
            r.delete(f"__dualwrite__:{name}:intact")  # wiped
            gate = ActivityEnvironment().run(acts.gates.evaluate_gate, GateInput(
                spec=spec, phase=frm, to=to, backfill_percent=100, backfill_done=True, at=dt.datetime.now(dt.UTC)))
            intact = [m for m in gate.metrics if m.name == "new_store_intact"]
            seen[to] = bool(intact)
            assert all(not m.ok for m in intact)
        assert seen == {Phase.DUAL_WRITE: False, Phase.BACKFILL: False, Phase.SHADOW_READ: False,
                        Phase.CLEANUP: True, Phase.DONE: False}
    finally:
        old.dispose()
        acts.close()


# -- outbox with Redis: the SQL outbox table while PostgreSQL is authoritative, a Redis stream after ---------
# (a block of its own; the sync case is the test above)


def outbox_waiting(old: Store, url: str, name: str) -> int:
    """Entries still waiting in the migration's outboxes: PostgreSQL's table and Redis' stream."""
    sql = fetch_all(old, f"SELECT COUNT(*) FROM dualwrite_outbox WHERE migration = '{name}'")[0][0]
    r = redis.Redis.from_url(url)
    stream = f"__dualwrite__:{name}:outbox"
    return int(str(sql)) + (int(r.xlen(stream)) if r.exists(stream) else 0)


async def drained(old: Store, url: str, name: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while outbox_waiting(old, url, name):
        assert asyncio.get_running_loop().time() < deadline, "the relay did not drain the outboxes"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("strategy", ["outbox"])
async def test_postgresql_to_redis_through_every_phase_by_strategy(
        dw: MigrationDriver, kv_worker: StoreResolver, kv_queue: str, databases: Databases,
        private_redis: RedisServer, strategy: str) -> None:
    name = f"kvo-{secrets.token_hex(3)}"
    table = f"kv_ob_{secrets.token_hex(3)}"
    old = Store(StoreRef("pgold", pg_url(databases.pg_db("old"))))
    create_pg(old, table, ROWS)
    spec = redis_spec(name, table, strategy)
    writer = DualWriter.from_resolver(spec, kv_worker, options=AdapterOptions(phase_ttl=0.05, pool_size=2,
                                                                              shadow_after_write_cutover=True))
    app = App(writer, table)
    thread = threading.Thread(target=app.run, daemon=True)
    prefix = f"{name}:"
    stream = f"__dualwrite__:{name}:outbox"
    r = redis.Redis.from_url(private_redis.url)
    handle = await dw.start(spec, task_queue=kv_queue, tuning=fast_tuning())
    try:
        thread.start()
        await dw.advance_to(handle, "BACKFILL", timeout=120)
        await dw.wait(handle, lambda s: bool(s.tables) and all(t.done for t in s.tables), "backfill done", 120)
        await dw.advance_to(handle, "SHADOW_READ")
        v = await verify(dw, handle, "before cutover")
        assert v.ok and v.direction == "old->new", v
        assert not r.exists(stream) or r.xlen(stream) == 0  # PostgreSQL authoritative: its outbox table
        await dw.advance_to(handle, "CUTOVER_READS")
        await dw.advance_to(handle, "CUTOVER_WRITES")
        await asyncio.sleep(1.5)  # Redis first now: each write's key in the stream, mirrored by the relay
        assert writer.route().authoritative.value == "new"
        assert r.exists(stream), "no write after write cutover reached the Redis outbox"
        v = await verify(dw, handle, "after write cutover")
        assert v.ok and v.direction == "new->old", v

        # rollback from CUTOVER_WRITES: the stream is caught up under the fence, PostgreSQL holds every write
        res = await dw.update(handle, "rollback", to="CUTOVER_READS", by="pytest", reason="drill")
        assert res.ok, res.message
        await dw.settled(handle, "CUTOVER_READS")
        await asyncio.sleep(1.0)
        app.stop.set()
        await asyncio.to_thread(thread.join)
        assert_acknowledged(app, pg_rows(old, table), "PostgreSQL after the rollback")
        await drained(old, private_redis.url, name)
        assert_acknowledged(app, redis_rows(private_redis.url, prefix), "Redis after the rollback")
        v = await verify(dw, handle, "after rollback")
        assert v.ok and v.repaired == 0, v

        # forward again, to the end
        app.stop.clear()
        thread = threading.Thread(target=app.run, daemon=True)
        thread.start()
        await dw.advance_to(handle, "CUTOVER_WRITES")
        await asyncio.sleep(1.0)
        app.stop.set()
        await asyncio.to_thread(thread.join)
        await drained(old, private_redis.url, name)
        v = await verify(dw, handle, "final")
        assert v.ok and v.repaired == 0 and v.rows_compared > 0, v
        assert pg_rows(old, table) == redis_rows(private_redis.url, prefix)
        assert_acknowledged(app, redis_rows(private_redis.url, prefix), "Redis")
        assert_acknowledged(app, pg_rows(old, table), "PostgreSQL (the relay's mirror from the stream)")
        assert not app.failed, app.failed[:3]
        assert app.count > 100
        st = await dw.advance_to(handle, "DONE", timeout=120)
        assert st.phase == "DONE"
        assert not r.exists(stream), "CLEANUP leaves no outbox stream behind"
    finally:
        app.stop.set()
        if thread.is_alive():
            await asyncio.to_thread(thread.join)
        writer.close()
        old.dispose()
        if (await dw.status(handle)).phase != "DONE":
            await handle.terminate("test over")
