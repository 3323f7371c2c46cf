"""The write fence end to end: an ``outbox`` migration driven by the workflow on the dev server, with two
application instances (real DualWriters) whose threads keep hammering the SAME few keys through the adapter
(one thread read-modify-writes ``name``, another ``amount``, each bumping the version; a third deletes and
re-inserts other keys), through write cutover and a rollback out of CUTOVER_WRITES. Both authority changes
are fenced: no acknowledged update is lost (every increment of ``amount`` is there, every key ends with its
last acknowledged ``name``), no deleted row comes back, and the two stores end equal.

Real Temporal dev server, the session's in-process worker, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import Counter
from decimal import Decimal
from typing import Any

from conftest import MigrationDriver, create_pg, eventually, fetch_all, rows_of, save_histories, spec_for
from temporalio.client import Client, WorkflowExecutionStatus

from dualwrite import outbox
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.store import Store
from workflows.models import Phase
from workflows.relay import relay_workflow_id

HOT = (1, 2, 3, 4)
"""Keys whose name and amount two instances update all the time."""
CHURN = (10, 11, 12)
"""Keys deleted and re-inserted all the time."""


class Hammer:
    """Threads writing the same few keys through two adapter instances; remembers every acknowledged write."""

    def __init__(self, writers: list[DualWriter], table: str) -> None:
        self.writers, self.table = writers, table
        self.name_of: dict[int, str] = {}
        self.increments: Counter[int] = Counter()
        self.present: dict[int, str | None] = {}
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def _rmw(self, w: DualWriter, key: int, column: str, n: int) -> None:
        t = self.table
        started = time.perf_counter()
        with w.unit_of_work(entity=f"{t}:{key}") as uow:
            row = uow.connection.exec_driver_sql(
                f"SELECT name, amount, version FROM {t} WHERE id = %s FOR UPDATE", (key,)).first()
            assert row is not None, key
            values: dict[str, Any] = {"version": row[2] + 1}
            if column == "name":
                values["name"] = f"{column}-{n}"
            else:
                values["amount"] = row[1] + 1
            assert uow.update(t, key, values) == 1
        with self._lock:  # acknowledged
            self.latencies.append(time.perf_counter() - started)
            if column == "name":
                self.name_of[key] = values["name"]
            else:
                self.increments[key] += 1

    def _churn(self, w: DualWriter, key: int, n: int) -> None:
        t = self.table
        with w.unit_of_work(entity=f"{t}:{key}") as uow:
            found = uow.connection.exec_driver_sql(f"SELECT version FROM {t} WHERE id = %s FOR UPDATE",
                                                   (key,)).first()
            if found is not None:
                uow.delete(t, key)
                value = None
            else:
                value = f"re-{n}"
                uow.insert(t, {"id": key, "name": value, "amount": Decimal("0"), "updated_at": None,
                               "version": 1000 + n})  # a re-insert is newer than anything before it
        with self._lock:
            self.present[key] = value

    def _loop(self, fn: Any, w: DualWriter) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                fn(w, n)
            except Exception as exc:  # noqa: BLE001 - a failed (unacknowledged) write is reported
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            self.stop.wait(0.002)

    def threads(self) -> list[threading.Thread]:
        a, b = self.writers
        jobs = [
            (lambda w, n: self._rmw(w, HOT[n % len(HOT)], "name", n), a),
            (lambda w, n: self._rmw(w, HOT[(n * 3) % len(HOT)], "amount", n), b),
            (lambda w, n: self._churn(w, CHURN[n % len(CHURN)], n), b if secrets.randbelow(2) else a),
            (lambda w, n: self._rmw(w, HOT[(n + 1) % len(HOT)], "amount", n), a),
        ]
        return [threading.Thread(target=self._loop, args=job, daemon=True) for job in jobs]

    def problems(self, store: Store, initial_amount: dict[int, Decimal]) -> list[str]:
        rows = {int(str(r[0])): r for r in fetch_all(store, f"SELECT id, name, amount FROM {self.table}")}
        out = []
        for k in HOT:
            if k in self.name_of and rows[k][1] != self.name_of[k]:
                out.append(f"key {k}: name {rows[k][1]!r}, last acknowledged {self.name_of[k]!r}")
            want = initial_amount[k] + self.increments[k]
            if rows[k][2] != want:
                out.append(f"key {k}: amount {rows[k][2]}, expected {want} (lost increments)")
        for k, value in self.present.items():
            got = rows.get(k)
            if value is None and got is not None:
                out.append(f"key {k}: deleted, but the row is back ({got[1]!r})")
            elif value is not None and (got is None or got[1] != value):
                out.append(f"key {k}: expected {value!r}, found {None if got is None else got[1]!r}")
        return out


async def _advance(dw: MigrationDriver, handle: Any, phase: str) -> Any:
    """Like MigrationDriver.advance_to, forcing past gates the live traffic's statistics may fail."""
    st = await dw.status(handle)
    while Phase(st.phase).rank < Phase(phase).rank:
        await dw.settled(handle, st.phase, 120)
        res = await dw.update(handle, "advance", by="pytest", reason="fence test", force=True)
        assert res.ok, res.message
        st = await dw.settled(handle, res.phase, 120)
    return st


async def test_rollback_from_cutover_writes_under_contention_loses_no_update_and_resurrects_no_delete(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    name = f"fence-{secrets.token_hex(3)}"
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="outbox")
    handle = await dw.start(spec)
    initial = {int(str(r[0])): Decimal(str(r[1])) for r in
               fetch_all(pg_old, f"SELECT id, amount FROM {table_name} WHERE id <= 4")}
    writers: list[DualWriter] = []
    hammer: Hammer | None = None
    threads: list[threading.Thread] = []
    try:
        await _advance(dw, handle, "DUAL_WRITE")
        opts = AdapterOptions(fence_max_wait=15.0)  # production defaults otherwise (1 s phase cache)
        writers = [DualWriter(spec, pg_old, pg_new, options=opts, instance_id=f"{name}-app{i}") for i in (1, 2)]
        hammer = Hammer(writers, table_name)
        threads = hammer.threads()
        for th in threads:
            th.start()
        st = await _advance(dw, handle, "CUTOVER_WRITES")
        await asyncio.sleep(1.5)
        res = await dw.update(handle, "rollback", to="CUTOVER_READS", reason="under contention", by="pytest")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        st = await dw.settled(handle, "CUTOVER_READS", 120)
        await asyncio.sleep(1.5)
        hammer.stop.set()
        for th in threads:
            await asyncio.to_thread(th.join)
        assert sum(hammer.increments.values()) > 50 and hammer.present, "the threads barely wrote"
        await eventually(lambda: all(outbox.log_depth(s, name)[0] == 0 for s in (pg_old, pg_new)), 60,
                         "the relay drained both outboxes")
        assert hammer.problems(pg_old, initial) == [], "an acknowledged write was lost or a delete undone"
        await eventually(lambda: rows_of(pg_old, table_name) == rows_of(pg_new, table_name), 30,
                         "both stores equal")
        assert hammer.problems(pg_new, initial) == []
        assert hammer.failures == [], hammer.failures[:5]  # no write waited past the fence's max wait
        assert st.counters.get("write_fences", 0) >= 2, st.counters  # cutover and rollback were fenced
        assert "write_fences_refused" not in st.counters and "rollbacks_refused" not in st.counters, st.counters
        fenced = [r for r in st.transitions if r.kind == "rollback"][-1]
        assert (fenced.from_phase, fenced.to_phase) == ("CUTOVER_WRITES", "CUTOVER_READS")
        lat = sorted(hammer.latencies)
        print(f"\nfence e2e: {len(lat)} acknowledged read-modify-writes, p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
        await handle.terminate("test over")
        await save_histories(dw.client, handle.id, "write-fence")
    finally:
        if hammer is not None:
            hammer.stop.set()
        for th in threads:
            if th.is_alive():
                await asyncio.to_thread(th.join)
        for w in writers:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(w.close)
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        with contextlib.suppress(Exception):
            relay = temporal_client.get_workflow_handle(relay_workflow_id(name))
            if (await relay.describe()).status is WorkflowExecutionStatus.RUNNING:
                await relay.terminate("test over")
