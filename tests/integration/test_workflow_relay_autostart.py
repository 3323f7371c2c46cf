"""The relay comes with the migration: starting an ``outbox`` migration the way the CLI and the Web UI do
(``MigrationWorkflow`` alone) yields a running RelayWorkflow that mirrors outbox rows, without anyone starting
it by hand; re-entering PREPARE does not start a second one; a relay started first (a bench's tuned one) is
adopted; CLEANUP finishes it. And a rollback from CUTOVER_WRITES while an application keeps writing through
the outbox succeeds (the relay's backlog is caught up, keys still in the log are in flight) and loses no
acknowledged write.

Real Temporal dev server, the session's in-process worker, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import threading
from typing import Any

from conftest import MigrationDriver, create_pg, eventually, fetch_all, rows_of, save_histories, spec_for
from temporalio.client import Client, WorkflowExecutionStatus

from dualwrite import control, outbox
from dualwrite.store import Store
from workflows import phases
from workflows.models import Phase
from workflows.relay import RelayInput, relay_workflow_id


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def _relay_status(client: Client, migration: str) -> WorkflowExecutionStatus | None:
    try:
        desc = await client.get_workflow_handle(relay_workflow_id(migration)).describe()
    except Exception:  # noqa: BLE001 - not started (yet)
        return None
    return desc.status


async def _stop_relay(client: Client, migration: str) -> None:
    """A failed test must not leave a relay holding an activity slot of the shared worker."""
    if await _relay_status(client, migration) is WorkflowExecutionStatus.RUNNING:
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(relay_workflow_id(migration)).terminate("test over")


ADAPTER_MARK = "SELECT set_config('dualwrite.adapter', 'on', true)"
"""The simulated applications here stand in for the adapter: they mark their transactions as its own, so
bypass capture does not count their writes."""


def _write_logged(store: Store, migration: str, table: str, key: int, name: str) -> None:
    """An application write with the outbox strategy: the row and its key in one transaction."""
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(ADAPTER_MARK)
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s, 1.0, '2025-01-01', 1)", (key, name))
        cur.execute(outbox.append_sql(store), (migration, table, json.dumps([key])))
        cur.close()
        conn.commit()


async def test_migration_starts_its_relay_and_cleanup_finishes_it(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 0)
    name = _name("autorelay")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="outbox"))
    try:
        await eventually(lambda: _relay_status(temporal_client, name), 30, "the relay started by the migration")
        assert await _relay_status(temporal_client, name) is WorkflowExecutionStatus.RUNNING
        relay = temporal_client.get_workflow_handle(relay_workflow_id(name))
        first_run = (await relay.describe()).run_id
        st = await dw.settled(handle, "PREPARE")
        assert st.counters.get("relay_started") == 1, st.counters

        # an outbox row written in the old store reaches the new one: nobody started the relay by hand
        await eventually(lambda: outbox.OUTBOX in pg_old.table_names(), 30, "the outbox created by the relay")
        _write_logged(pg_old, name, table_name, 900_001, "logged")
        await eventually(lambda: fetch_all(pg_new, f"SELECT name FROM {table_name} WHERE id = 900001")
                         == [("logged",)], 30, "the outbox row mirrored by the relay")

        # re-entering PREPARE (a rollback) finds the relay running: no second one, the same run
        await dw.advance_to(handle, "DUAL_WRITE")
        res = await dw.update(handle, "rollback", to="PREPARE", reason="again", by="pytest")
        assert res.ok, res.message
        st = await dw.settled(handle, "PREPARE")
        assert st.counters.get("relay_already_running") == 1 and st.counters.get("relay_started") == 1
        assert (await relay.describe()).run_id == first_run

        # CLEANUP tells it to finish: its final drain runs and it completes
        await dw.advance_to(handle, "CLEANUP")
        await eventually(lambda: _relay_completed(temporal_client, name), 60, "the relay finished at CLEANUP")
        assert rows_of(pg_new, table_name)[-1][:2] == (900_001, "logged")
        await handle.terminate("test over")
        await save_histories(dw.client, handle.id, "relay-autostart")
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        await _stop_relay(temporal_client, name)


async def _relay_completed(client: Client, migration: str) -> bool:
    return await _relay_status(client, migration) is WorkflowExecutionStatus.COMPLETED


async def test_a_relay_started_first_is_adopted(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    from workflows.models import TASK_QUEUE

    create_pg(pg_old, table_name, 50)
    create_pg(pg_new, table_name, 0)
    name = _name("tunedrelay")
    spec = spec_for(name, "pgold", "pgnew", table_name, strategy="outbox")
    relay = await temporal_client.start_workflow(
        "RelayWorkflow", RelayInput(spec=spec, poll_seconds=0.1, heartbeat_timeout_seconds=5),
        id=relay_workflow_id(name), task_queue=TASK_QUEUE)
    handle = await dw.start(spec)
    try:
        st = await dw.settled(handle, "PREPARE")
        assert st.counters.get("relay_already_running") == 1 and "relay_started" not in st.counters, st.counters
        desc = await relay.describe()
        assert desc.status is WorkflowExecutionStatus.RUNNING and desc.run_id == relay.result_run_id
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        await _stop_relay(temporal_client, name)


class OutboxApp:
    """An application instance with the outbox strategy, following the published phase like the adapter:
    each write goes to the authoritative store with its key appended to that store's outbox in the same
    transaction; the relay does all mirroring. Every acknowledged write is remembered."""

    def __init__(self, old: Store, new: Store, migration: str, table: str) -> None:
        self.old, self.new, self.migration, self.table = old, new, migration, table
        self.instance = f"outbox-app-{secrets.token_hex(2)}"
        self.expected: dict[int, str] = {}
        self.rnd = random.Random(11)
        self.next_id = 3_000_000
        self.counter = 0
        self.phases_seen: set[str] = set()
        self.fenced_waits = 0
        self.stop = threading.Event()

    def step(self) -> None:
        state = control.read_state(self.old, self.migration)
        assert state is not None
        self.phases_seen.add(state.phase)
        control.record_instance_seen(self.old, self.migration, self.instance, state.epoch)
        if control.is_fenced(state.overrides, None):
            # as the adapter does: while authority moves, a write waits for the fence to lift. (Writing on
            # into the losing store after the fence's drain is what the fence exists to prevent; an app that
            # ignored it lost a write here once the flip landed between its read of the phase and its commit.)
            self.fenced_waits += 1
            return
        store = self.new if phases.authoritative(Phase(state.phase)) == "new" else self.old
        self.counter += 1
        value = f"o{self.counter}"
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute(ADAPTER_MARK)
            if self.counter % 3 == 0:
                self.next_id += 1
                key = self.next_id
                cur.execute(f"INSERT INTO {self.table} VALUES (%s, %s, 1.0, '2025-01-01', 1)", (key, value))
            else:
                key = self.rnd.randint(1, 1000)
                cur.execute(f"UPDATE {self.table} SET name = %s, version = version + 1 WHERE id = %s", (value, key))
            cur.execute(outbox.append_sql(store), (self.migration, self.table, json.dumps([key])))
            cur.close()
            conn.commit()
        self.expected[key] = value  # acknowledged

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            self.stop.wait(0.005)

    def lost(self, store: Store) -> dict[int, tuple[str, Any]]:
        found = {int(str(r[0])): r[1] for r in fetch_all(store, f"SELECT id, name FROM {self.table}")}
        return {k: (v, found.get(k)) for k, v in self.expected.items() if found.get(k) != v}


async def test_rollback_from_cutover_writes_under_outbox_writes_succeeds_and_loses_nothing(
        dw: MigrationDriver, temporal_client: Client, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 1000)
    create_pg(pg_new, table_name, 0)
    name = _name("outboxrb")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, strategy="outbox"))
    app = OutboxApp(pg_old, pg_new, name, table_name)
    writer = threading.Thread(target=app.run, daemon=True)
    try:
        await dw.advance_to(handle, "DUAL_WRITE")
        writer.start()
        await dw.advance_to(handle, "CUTOVER_WRITES")
        await eventually(lambda: "CUTOVER_WRITES" in app.phases_seen, 10, "the app writes new first")
        await asyncio.sleep(1.0)
        res = await dw.update(handle, "rollback", to="CUTOVER_READS", reason="under load", by="pytest")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        st = await dw.settled(handle, "CUTOVER_READS")
        await eventually(lambda: "CUTOVER_READS" in app.phases_seen, 10, "old first again")
        await asyncio.sleep(0.5)
        app.stop.set()
        await asyncio.to_thread(writer.join)
        await eventually(lambda: all(outbox.log_depth(s, name)[0] == 0 for s in (pg_old, pg_new)), 30,
                         "the relay drained both outboxes")
        assert app.lost(pg_old) == {}, "an acknowledged write was lost by the rollback"
        assert "rollbacks_refused" not in st.counters, st.counters
        rb = [t for t in st.transitions if t.kind == "rollback"][-1]
        assert (rb.from_phase, rb.to_phase) == ("CUTOVER_WRITES", "CUTOVER_READS")
        # settle what was mirrored after the entry verification, then both stores agree
        before = st.counters["verifications"]
        assert (await dw.update(handle, "verify", reason="final")).ok
        st = await dw.wait(handle, lambda s: s.counters["verifications"] > before, "final verification")
        assert st.last_verification is not None and st.last_verification.ok
        assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
        assert app.lost(pg_new) == {}
        await handle.terminate("test over")
        await save_histories(dw.client, handle.id, "outbox-rollback")
    finally:
        app.stop.set()
        if writer.is_alive():
            await asyncio.to_thread(writer.join)
        with contextlib.suppress(Exception):
            control.forget_instance(pg_old, name, app.instance)
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
        await _stop_relay(temporal_client, name)
