"""[T2-2] item 5 / [T2-4] Strategy ``cdc`` on worker evidence: no adapter in the application reads both stores,
so the cutover gates and the rollback triggers judge the worker's own shadow samples. The sampler takes the
recently changed keys and the keys still in flight from the database's own log (a pgoutput slot), through
the capture's store side, as it takes them from the change log with ``triggers``.

- in auto mode, with gates that need shadow samples, a cdc migration passes SHADOW_READ by itself, and the
  gate's evidence names the worker's samples (before, it waited there forever: nothing produced samples);
- a row changed on the new store behind the relay's back fails the shadow gate: the samples really compare;
- in CUTOVER_READS the same drift trips the shadow-mismatch rollback trigger on the worker's samples.

Real Temporal dev server, the session's worker, the private PostgreSQL with ``wal_level=logical``.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
from typing import Any

from conftest import MigrationDriver, create_pg, execute, fast_tuning, spec_for
from temporalio.client import Client

from dualwrite import triggers
from dualwrite.config import StoreRef
from dualwrite.store import Store
from workflows.relay import relay_workflow_id

SHADOW_GATES = {"min_shadow_samples": 500}
"""Gates that need the worker's shadow samples (the other traffic metrics have no application to measure)."""


class _RawWriter:
    """An application that cannot be changed: plain SQL on the old store; only the slot sees its writes."""

    def __init__(self, store: Store, table: str) -> None:
        self.store, self.table = store, table
        self.stop = threading.Event()
        self.writes = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rnd = random.Random(7)
        while not self.stop.is_set():
            try:
                with self.store.connect() as conn:
                    cur = conn.cursor()
                    for _ in range(10):
                        cur.execute(f"UPDATE {self.table} SET name = %s, version = version + 1 WHERE id = %s",
                                    (f"raw-upd-{self.writes}", rnd.randint(1, 2000)))
                        self.writes += 1
                    cur.close()
                    conn.commit()
            except Exception as exc:  # noqa: BLE001 - recorded, the test asserts none happened
                self.errors.append(type(exc).__name__)
            self.stop.wait(0.05)


def _drift(new: Store, table: str) -> None:
    """Change rows on the new store behind the relay's back: a replica session passes the denied-writes
    triggers, and the relay skips the non-authoritative store's log (drift, not a change to mirror)."""
    sneaky = Store(StoreRef(f"sneaky{secrets.token_hex(2)}", new.engine.url.render_as_string(hide_password=False)))
    try:
        triggers.mark_replica(sneaky)
        execute(sneaky, f"UPDATE {table} SET name = 'drifted' WHERE id % 2 = 0")
    finally:
        sneaky.dispose()


async def _stop(client: Client, handle: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        await handle.terminate("test over")
    with contextlib.suppress(Exception):
        await client.get_workflow_handle(relay_workflow_id(name)).terminate("test over")


async def test_cdc_in_auto_mode_passes_shadow_read_on_worker_samples(
        dw: MigrationDriver, temporal_client: Client, cdc_pg_old: Store, cdc_pg_new: Store,
        table_name: str) -> None:
    from test_gate_evidence import _gate_results

    create_pg(cdc_pg_old, table_name, 2000)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"cdcsa-{secrets.token_hex(3)}"
    spec = spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc", mode="auto", gates=SHADOW_GATES)
    assert spec.gates.min_shadow_samples == 500
    writer = _RawWriter(cdc_pg_old, table_name)
    thread = threading.Thread(target=writer.run, daemon=True)
    handle = await dw.start(spec, tuning=fast_tuning())
    try:
        await dw.wait(handle, lambda s: s.phase != "PREPARE", "DUAL_WRITE", timeout=60)
        thread.start()
        st = await dw.wait(handle, lambda s: any(t.to_phase == "CUTOVER_READS" for t in s.transitions),
                           "CUTOVER_READS reached by itself", timeout=180)
        entered = next(t for t in st.transitions if t.to_phase == "CUTOVER_READS")
        assert (entered.from_phase, entered.kind, entered.gate_passed) == ("SHADOW_READ", "auto", True), entered
        gate = next(g for g in await _gate_results(temporal_client, handle.id)
                    if g["to"] == "CUTOVER_READS" and g["passed"])
        shadow = {m["name"]: m for m in gate["metrics"]}["shadow_match_rate"]
        assert shadow["verdict"] == "pass" and shadow["samples"] >= 500, shadow
        assert shadow["source"] == "worker shadow sample" and "worker shadow sample" in shadow["detail"], shadow
        assert writer.errors == [] and writer.writes > 0
    finally:
        writer.stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
        await _stop(temporal_client, handle, name)


async def test_cdc_shadow_gate_fails_on_rows_changed_behind_the_relay(
        dw: MigrationDriver, temporal_client: Client, cdc_pg_old: Store, cdc_pg_new: Store,
        table_name: str) -> None:
    create_pg(cdc_pg_old, table_name, 600)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"cdcsd-{secrets.token_hex(3)}"
    handle = await dw.start(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc",
                                     gates=SHADOW_GATES), tuning=fast_tuning())
    try:
        await dw.advance_to(handle, "SHADOW_READ")  # its gate passes on the worker's samples of equal stores
        _drift(cdc_pg_new, table_name)
        dry = await dw.update(handle, "advance", by="pytest", reason="dry run", dry_run=True)
        assert dry.gate is not None and not dry.gate.passed, dry.message
        shadow = next(m for m in dry.gate.metrics if m.name == "shadow_match_rate")
        assert shadow.verdict.value == "fail" and shadow.samples >= 500, shadow
        assert "worker shadow sample" in shadow.detail, shadow
    finally:
        await _stop(temporal_client, handle, name)


async def test_cdc_rollback_trigger_trips_on_worker_samples(
        dw: MigrationDriver, temporal_client: Client, cdc_pg_old: Store, cdc_pg_new: Store,
        table_name: str) -> None:
    create_pg(cdc_pg_old, table_name, 600)
    create_pg(cdc_pg_new, table_name, 0)
    name = f"cdcrb-{secrets.token_hex(3)}"
    handle = await dw.start(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc",
                                     rollback_triggers={"check_seconds": 1.0, "min_shadow_samples": 100}))
    try:
        await dw.advance_to(handle, "CUTOVER_READS")
        _drift(cdc_pg_new, table_name)
        st = await dw.wait(handle, lambda s: any(t.kind == "auto-rollback" for t in s.transitions),
                           "an automatic rollback", timeout=90)
        rb = next(t for t in st.transitions if t.kind == "auto-rollback")
        assert (rb.from_phase, rb.to_phase) == ("CUTOVER_READS", "SHADOW_READ"), rb
        assert "shadow_mismatch_rate" in rb.reason and "sampled by the worker" in rb.reason, rb.reason
    finally:
        await _stop(temporal_client, handle, name)


def test_cdc_sampler_takes_recent_and_in_flight_keys_from_the_slot(
        cdc_pg_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    """The sampler's two uses of the database's log, without a relay: keys changed on the old store and not
    applied yet are its recently changed keys, and their differences count as in flight, not as mismatches;
    once the slot moved past them (applied, as far as it knows) the same differences are mismatches."""
    from dualwrite.capture.cdc_side import CdcSide
    from dualwrite.capture.store_side import RelayStores
    from dualwrite.cdc import capture
    from dualwrite.mapping import identity_mapping
    from dualwrite.sample import CaptureChanges, recent_changes_for, sample_table

    create_pg(cdc_pg_old, table_name, 50)
    create_pg(cdc_pg_new, table_name, 50)
    forward = identity_mapping(cdc_pg_old.describe(table_name, refresh=True),
                               cdc_pg_new.describe(table_name, refresh=True))
    back = identity_mapping(cdc_pg_new.describe(table_name), cdc_pg_old.describe(table_name))
    name = f"cdcunit-{secrets.token_hex(3)}"
    rs = RelayStores(spec_for(name, "cdcpgold", "cdcpgnew", table_name, strategy="cdc"), cdc_pg_old, cdc_pg_new,
                     cdc_pg_old, lambda _t, reverse: back if reverse else forward)
    side = CdcSide()
    side.setup(rs)
    try:
        changes = recent_changes_for(rs, side)
        assert isinstance(changes, CaptureChanges)
        execute(cdc_pg_old, f"UPDATE {table_name} SET name = 'changed', version = version + 1 WHERE id <= 5")

        def pending() -> set[tuple[Any, ...]]:
            return (side.pending_keys(cdc_pg_old, cdc_pg_old, name, table_name, forward)
                    | side.pending_keys(cdc_pg_new, cdc_pg_old, name, table_name, back))

        recent = changes.recent(table_name, forward, 100, 0.5, None)
        assert sorted(recent) == [(i,) for i in range(1, 6)], recent
        res = sample_table(cdc_pg_old, cdc_pg_new, forward, name, recent=10, random_n=0, pending=pending,
                           wait_seconds=0.5, changes=changes)
        assert (res.recent, res.in_flight, res.mismatch) == (5, 5, {}), res

        assert capture.skip(cdc_pg_old, cdc_pg_old, name, lambda: True)  # the slot moves on: nothing pending
        assert changes.recent(table_name, forward, 100, 0.5, None) == []
        res = sample_table(cdc_pg_old, cdc_pg_new, forward, name, recent=0, random_n=50, pending=pending,
                           changes=changes)
        assert (res.compared, res.in_flight, res.mismatches) == (50, 0, 5), res
    finally:
        side.teardown(rs)
