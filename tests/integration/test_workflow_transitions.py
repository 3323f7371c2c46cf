"""Operator transitions against the real server: illegal ones are rejected by the update validators with
their reason and leave no trace in history; gates refuse, approvals and forced advances are recorded;
the phase barrier waits for live application instances; signals drive the same transitions; and a
rollback from every phase before CLEANUP leaves the old store authoritative with no row lost."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from conftest import (
    FakeApp,
    MigrationDriver,
    create_pg,
    fast_tuning,
    retired_table,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import WorkflowFailureError

from dualwrite import control
from dualwrite.store import Store
from workflows.models import TransitionRequest


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def test_illegal_transitions_are_rejected_with_their_reason(dw: MigrationDriver, pg_old: Store,
                                                                  pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 0)
    handle = await dw.start(spec_for(_name("illegal"), "pgold", "pgnew", table_name))
    await dw.settled(handle, "PREPARE")
    events = await dw.history_events(handle)

    assert "cannot skip phases: PREPARE -> BACKFILL would skip DUAL_WRITE" in await dw.rejected(
        handle, "advance", to="BACKFILL")
    assert "already in PREPARE" in await dw.rejected(handle, "advance", to="PREPARE")
    assert "nothing to roll back to: PREPARE is the first phase" in await dw.rejected(
        handle, "rollback", reason="because")
    assert "not paused" in await dw.rejected(handle, "resume")
    assert "needs no approval" in await dw.rejected(handle, "approve")
    assert "nothing to verify before DUAL_WRITE" in await dw.rejected(handle, "verify")
    assert "a forced advance needs a reason" in await dw.rejected(handle, "advance", force=True)
    # a rejected update writes nothing to history
    assert await dw.history_events(handle) == events

    assert (await dw.update(handle, "pause", by="carol", reason="lunch")).ok
    assert "paused in PREPARE: resume it before advancing" in await dw.rejected(handle, "advance")
    assert "already paused" in await dw.rejected(handle, "pause")
    assert (await dw.update(handle, "resume", by="carol")).ok
    dry = await dw.update(handle, "advance", dry_run=True)
    assert dry.ok and "dry run" in dry.message and dry.phase == "PREPARE"

    await dw.advance_to(handle, "DUAL_WRITE")
    assert "a rollback needs a reason" in await dw.rejected(handle, "rollback")
    assert "SHADOW_READ is not before DUAL_WRITE" in await dw.rejected(handle, "rollback", to="SHADOW_READ",
                                                                       reason="x")
    assert "use rollback to go back" in await dw.rejected(handle, "advance", to="PREPARE")

    await dw.advance_to(handle, "CLEANUP")
    assert "cannot roll back from CLEANUP" in await dw.rejected(handle, "rollback", reason="too late")
    assert "cannot skip" not in await dw.rejected(handle, "verify")
    assert "nothing to verify in CLEANUP" in await dw.rejected(handle, "verify")

    # the same transitions as signals (the Web UI's way): an illegal one is counted and shown, not applied
    await handle.signal("rollback_signal", TransitionRequest(reason="ui click", by="dave"))
    st = await dw.wait(handle, lambda s: s.counters.get("signals_rejected", 0) == 1, "signal rejected")
    assert st.phase == "CLEANUP"
    desc = await handle.describe()
    assert desc.status is not None
    await handle.signal("advance_signal", TransitionRequest(reason="finish", by="dave"))
    final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.phase == "DONE"
    assert [(t.to_phase, t.kind, t.by) for t in final.transitions][-1] == ("DONE", "advance", "dave")
    assert [t.kind for t in final.transitions].count("pause") == 1
    assert [t.kind for t in final.transitions].count("resume") == 1
    await save_histories(dw.client, handle.id, "operator-signals")


async def test_gates_approvals_and_forced_advances(dw: MigrationDriver, pg_old: Store, pg_new: Store,
                                                   table_name: str) -> None:
    create_pg(pg_old, table_name, 500)
    create_pg(pg_new, table_name, 0)
    name = _name("gates")
    spec = spec_for(name, "pgold", "pgnew", table_name, gates={"require_approval": True})
    handle = await dw.start(spec)
    await dw.advance_to(handle, "SHADOW_READ")

    # drift behind the migration's back: an on-demand verification finds it by class and repairs it
    with pg_new.connect() as conn:
        conn.execute(f"DELETE FROM {table_name} WHERE id IN (3, 4)")
        conn.execute(f"UPDATE {table_name} SET name = 'drift' WHERE id = 9")
        conn.commit()
    before = (await dw.status(handle)).counters["verifications"]
    assert (await dw.update(handle, "verify", by="erin", reason="spot check")).ok
    st = await dw.wait(handle, lambda s: s.counters["verifications"] > before, "on-demand verification")
    v = st.last_verification
    assert v is not None and v.ok and (v.missing, v.extra, v.field_different, v.repaired) == (2, 0, 1, 3)
    assert v.tables[0].fields == ["name"]
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)

    # a key the drain cannot mirror (its table is not in the spec) is retried with backoff, counted, and
    # holds the gate until an operator clears it
    control.enqueue_repair(pg_old, name, "no_such_table", [(1,)], reason="test")
    st = await dw.wait(handle, lambda s: s.counters.get("repair_failed", 0) >= 1 and s.repair_queue_depth == 1,
                       "failed repair counted")
    refused = await dw.update(handle, "advance", by="erin")
    assert not refused.ok and "1 keys wait in the repair queue" in refused.message
    with pg_old.connect() as conn:
        conn.execute("DELETE FROM dualwrite_repair_queue WHERE migration = %s", (name,))
        conn.commit()
    await dw.wait(handle, lambda s: s.repair_queue_depth == 0, "queue depth back to 0", 30)

    refused = await dw.update(handle, "advance", by="erin")
    assert not refused.ok and refused.phase == "SHADOW_READ"
    assert "the gate into CUTOVER_READS did not pass" in refused.message
    assert "requires an approval" in refused.message
    st = await dw.status(handle)
    assert st.gate is not None and st.gate["checks"]["approval"] is False
    assert st.gate["checks"]["backfill_completion"] and st.gate["checks"]["reconciliation_gap"]
    assert st.gate["evidence"]["verification"]["rows_compared"] == 500

    dry = await dw.update(handle, "advance", force=True, reason="try", dry_run=True)
    assert dry.ok and "forced past a failing gate" in dry.message
    assert (await dw.update(handle, "approve", by="frank", reason="checked dashboards")).ok
    res = await dw.update(handle, "advance", by="erin")
    assert res.ok and res.phase == "CUTOVER_READS", res.message
    await dw.settled(handle, "CUTOVER_READS")

    assert not (await dw.update(handle, "advance")).ok  # needs a new approval
    forced = await dw.update(handle, "advance", force=True, reason="incident 42: approver on leave", by="erin")
    assert forced.ok and forced.phase == "CUTOVER_WRITES"
    st = await dw.settled(handle, "CUTOVER_WRITES")
    last = st.transitions[-1]
    assert (last.kind, last.reason, last.by) == ("force", "incident 42: approver on leave", "erin")
    assert st.counters["forced_transitions"] == 1
    assert [t.kind for t in st.transitions].count("approve") == 1
    await handle.terminate("test over")
    await save_histories(dw.client, handle.id, "gates-force")


async def test_phase_barrier_waits_for_live_instances(dw: MigrationDriver, pg_old: Store, pg_new: Store,
                                                      table_name: str) -> None:
    create_pg(pg_old, table_name, 100)
    create_pg(pg_new, table_name, 0)
    name = _name("barrier")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name))
    await dw.settled(handle, "PREPARE")
    state = control.read_state(pg_old, name)
    assert state is not None and (state.phase, state.epoch) == ("PREPARE", 1)
    control.record_instance_seen(pg_old, name, "app-1", 1)
    control.record_instance_seen(pg_old, name, "app-2", 1)

    res = await dw.update(handle, "advance", by="gina")
    assert res.ok and res.epoch == 2
    assert control.read_state(pg_old, name).phase == "DUAL_WRITE"  # type: ignore[union-attr]
    control.record_instance_seen(pg_old, name, "app-1", 2)  # app-2 lags behind
    st = await dw.wait(handle, lambda s: "app-2" in s.waiting_for, "barrier names the lagging instance", 30)
    assert "barrier" in st.waiting_for and "app-1" not in st.waiting_for
    assert "not finished its work" in await dw.rejected(handle, "advance")
    control.record_instance_seen(pg_old, name, "app-2", 2)
    st = await dw.settled(handle, "DUAL_WRITE", timeout=30)
    assert st.counters["barriers_passed"] == 2
    await handle.terminate("test over")


async def test_rollback_from_every_phase_keeps_old_authoritative(dw: MigrationDriver, pg_old: Store,
                                                                 pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 2_000)
    create_pg(pg_new, table_name, 0)
    name = _name("rollback")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name, batch_size=300))
    app = FakeApp(pg_old, pg_new, pg_old, name, table_name)
    await dw.settled(handle, "PREPARE")

    for phase, back_to in [("DUAL_WRITE", "PREPARE"), ("BACKFILL", "DUAL_WRITE"), ("SHADOW_READ", "BACKFILL"),
                           ("CUTOVER_READS", "SHADOW_READ")]:
        await dw.advance_to(handle, phase)
        app.write(9)  # old first, then mirrored
        before = rows_of(pg_old, table_name)
        res = await dw.update(handle, "rollback", to=back_to, reason=f"rollback drill from {phase}", by="hal")
        assert res.ok and res.phase == back_to, res.message
        await dw.settled(handle, back_to)
        # old stayed authoritative: not a row changed by the rollback, and applications are told
        assert rows_of(pg_old, table_name) == before
        state = control.read_state(pg_old, name)
        assert state is not None and (state.phase, state.epoch) == (back_to, res.epoch)

    # from CUTOVER_WRITES the new store is authoritative: writes acknowledged there (including ones whose
    # mirror to old was lost in a crash, so nothing queued them) must be in old before it takes over again
    await dw.advance_to(handle, "CUTOVER_WRITES")
    app.write(12, authoritative="new")
    lost = app.write(9, authoritative="new", crash_secondary=True)
    assert rows_of(pg_old, table_name) != rows_of(pg_new, table_name)
    acknowledged = rows_of(pg_new, table_name)
    res = await dw.update(handle, "rollback", to="SHADOW_READ", reason="p99 regression", by="hal")
    assert res.ok and res.phase == "SHADOW_READ", res.message
    st = await dw.settled(handle, "SHADOW_READ")
    assert rows_of(pg_old, table_name) == acknowledged, "a write acknowledged by the new store was lost"
    assert rows_of(pg_new, table_name) == acknowledged
    rollbacks = [t for t in st.transitions if t.kind == "rollback"]
    assert [(t.from_phase, t.to_phase) for t in rollbacks][-1] == ("CUTOVER_WRITES", "SHADOW_READ")
    assert st.counters["rollbacks"] == 5
    assert st.counters["rows_repaired"] >= len(set(lost)) - 3  # deletes of absent rows need no repair
    assert st.counters["backfill_batches"] > 0
    await handle.terminate("test over")
    await save_histories(dw.client, handle.id, "rollbacks")


async def test_bad_spec_fails_before_anything_is_written(dw: MigrationDriver, pg_old: Store, pg_new: Store,
                                                         table_name: str) -> None:
    create_pg(pg_old, table_name, 10)  # no target table in the new store
    name = _name("badspec")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name))
    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), timeout=60)
    text = str(info.value.cause) + " " + str(getattr(info.value.cause, "cause", ""))
    assert "PREPARE failed" in text and table_name in text and "does not exist" in text, text
    control.ensure_schema(pg_old)
    assert control.read_state(pg_old, name) is None  # nothing published: applications never saw it


async def test_pause_holds_the_backfill_and_auto_mode_holds_before_cleanup(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 30_000)
    create_pg(pg_new, table_name, 0)
    spec = spec_for(_name("hold"), "pgold", "pgnew", table_name, mode="auto", backfill_concurrency=1,
                    batch_size=500)
    handle = await dw.start(spec, tuning=fast_tuning(backfill_ranges=10))
    await dw.wait(handle, lambda s: s.phase == "BACKFILL", "BACKFILL entered")
    paused = await dw.update(handle, "pause", by="ivy", reason="hold the backfill")
    assert paused.ok
    await asyncio.sleep(3)
    st = await dw.status(handle)
    assert st.phase == "BACKFILL" and st.paused and not st.tables[0].done
    assert st.tables[0].ranges_done <= 2, "a paused backfill went on starting ranges"
    assert (await dw.update(handle, "resume", by="ivy")).ok

    st = await dw.wait(handle, lambda s: s.phase == "CUTOVER_WRITES" and "holds before CLEANUP" in s.waiting_for,
                       "auto mode holding before CLEANUP", 120)
    assert not st.paused
    assert "confirm" in await dw.rejected(handle, "approve", by="ivy", reason="numbers look good")
    approved = await dw.update(handle, "approve", by="ivy", reason="numbers look good", confirm_cleanup=True)
    assert approved.ok
    final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.phase == "DONE"
    assert [(t.to_phase, t.kind) for t in final.transitions if t.kind != "cleanup"][-2:] == [
        ("CLEANUP", "auto"), ("DONE", "auto")]
    assert rows_of(pg_old, retired_table(final, table_name)) == rows_of(pg_new, table_name)


async def test_an_idle_paused_migration_writes_no_history(dw: MigrationDriver, pg_old: Store, pg_new: Store,
                                                          table_name: str) -> None:
    """A due continuous verification that cannot run (paused) must not poll: no timer loop in history."""
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    handle = await dw.start(spec_for(_name("idle"), "pgold", "pgnew", table_name, verify_interval_seconds=1),
                            tuning=fast_tuning(repair_idle_seconds=120))
    await dw.advance_to(handle, "DUAL_WRITE")
    assert (await dw.update(handle, "pause", reason="quiet")).ok
    await asyncio.sleep(1.5)
    events = await dw.history_events(handle)
    await asyncio.sleep(3)
    assert await dw.history_events(handle) == events
    assert (await dw.update(handle, "resume")).ok
    await dw.wait(handle, lambda s: s.counters.get("verifications", 0) >= 1, "verification after resume")
    await handle.terminate("test over")
