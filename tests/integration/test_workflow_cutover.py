"""Cutover gates, automatic rollback, rollback under live writes, tenants and the point of no return, end to
end: the real Temporal dev server, the in-process worker and real PostgreSQL databases.

The live statistics the gates read are the ``dualwrite_stats`` windows applications flush; here the test
flushes them itself (the way N application instances would), so each scenario controls its traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import threading
from typing import Any

import sqlalchemy as sa
from conftest import (
    MigrationDriver,
    create_pg,
    eventually,
    execute,
    fast_tuning,
    fetch_all,
    rows_of,
    save_histories,
    spec_for,
)
from temporalio.client import WorkflowUpdateFailedError

from dualwrite import bypass, control, outbox, triggers
from dualwrite import stats as st
from dualwrite.config import StoreRef
from dualwrite.mapping import identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.store import Store
from workflows import phases
from workflows.models import Phase


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def feed_stats(store: Store, migration: str, *, instance: str = "app-1", shadow_match: int = 0,
               shadow_mismatch: int = 0, secondary_ok: int = 0, secondary_failed: int = 0, primary_ok: int = 0,
               primary_failed: int = 0, latency: int = 0) -> None:
    """Flush one statistics window as an application instance would."""
    w = st.StatsWindow()
    if shadow_match:
        w.add(st.SHADOW, "match", shadow_match)
    if shadow_mismatch:
        w.add(st.SHADOW, "field_different", shadow_mismatch)
    if secondary_ok:
        w.add(st.SECONDARY, "attempt", secondary_ok + secondary_failed)
        w.add(st.SECONDARY, "success", secondary_ok)
    if secondary_failed:
        w.add(st.SECONDARY, "failure:unavailable", secondary_failed)
    if primary_ok:
        w.add(st.PRIMARY, "success", primary_ok)
    if primary_failed:
        w.add(st.PRIMARY, "failure:unavailable", primary_failed)
    for _ in range(latency):
        w.observe(st.LAT_CALL, 0.45)
        w.observe(st.LAT_DIRECT, 0.42)
    st.ensure_schema(store)
    st.write_window(store, migration, instance, w)


HEALTHY: dict[str, Any] = {"shadow_match": 400, "secondary_ok": 400, "latency": 400}
SMALL_GATES = {"min_shadow_samples": 200, "min_write_samples": 200, "min_latency_samples": 200}


# ---------------------------------------------------------------------------------------------------------
# the gate


async def test_gate_refuses_a_corrupted_row_naming_it_and_passes_after_repair(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 400)
    create_pg(pg_new, table_name, 0)
    name = _name("gate")
    spec = spec_for(name, "pgold", "pgnew", table_name, gates={**SMALL_GATES, "window_seconds": 4})
    handle = await dw.start(spec)
    await dw.advance_to(handle, "SHADOW_READ")

    # no traffic yet: the statistics are "not yet", which never passes, and a dry run says so
    dry = await dw.update(handle, "advance", dry_run=True)
    assert not dry.ok and dry.gate is not None and dry.phase == "SHADOW_READ"
    verdicts = {m.name: m.verdict.value for m in dry.gate.metrics}
    assert verdicts["shadow_match_rate"] == "not-yet" and verdicts["p99_latency_impact"] == "not-yet"
    assert any("CUTOVER_READS" in w for w in dry.would) and any("reads" in w for w in dry.would)

    # a row of the new store is corrupted behind the migration's back; traffic looks healthy
    with pg_new.connect() as conn:
        conn.execute(f"UPDATE {table_name} SET name = 'corrupt' WHERE id = 123")
        conn.commit()
    await asyncio.sleep(4.5)  # the last verification is now older than the window: the gate verifies anew
    feed_stats(pg_old, name, **HEALTHY)
    refused = await dw.update(handle, "advance", by="erin", reason="go")
    assert not refused.ok and refused.phase == "SHADOW_READ", refused.message
    assert refused.gate is not None
    recon = next(m for m in refused.gate.metrics if m.name == "reconciliation_gap")
    assert recon.verdict.value == "fail" and recon.value == 1
    assert table_name in recon.detail and "fields name" in recon.detail and "keys 123" in recon.detail
    assert {m.name: m.verdict.value for m in refused.gate.metrics}["shadow_match_rate"] == "pass"
    st_ = await dw.status(handle)
    assert st_.gate is not None and not st_.gate["passed"] and "keys 123" in " ".join(st_.gate["reasons"])
    v = st_.last_verification
    assert v is not None and not v.ok and not v.repair and v.tables[0].sample_keys == [[123]]
    assert fetch_all(pg_new, f"SELECT name FROM {table_name} WHERE id = 123") == [("corrupt",)]  # compared only

    # repair (an operator's verify), then the gate passes on the fresh, clean evidence
    before = st_.counters["verifications"]
    assert (await dw.update(handle, "verify", by="erin", reason="repair")).ok
    await dw.wait(handle, lambda s: s.counters["verifications"] > before and s.last_verification.ok, "repair")
    feed_stats(pg_old, name, **HEALTHY)
    res = await dw.update(handle, "advance", by="erin", reason="go")
    assert res.ok and res.phase == "CUTOVER_READS", res.message
    assert res.gate is not None and res.gate.passed and all(m.ok for m in res.gate.metrics)
    st_ = await dw.settled(handle, "CUTOVER_READS")
    entered = [t for t in st_.transitions if t.to_phase == "CUTOVER_READS"][-1]
    assert entered.gate_passed is True and entered.kind == "advance"
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
    await handle.terminate("test over")


# ---------------------------------------------------------------------------------------------------------
# automatic rollback


async def test_automatic_rollback_when_the_new_store_fails_during_cutover_reads(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 300)
    create_pg(pg_new, table_name, 0)
    name = _name("autorb")
    spec = spec_for(name, "pgold", "pgnew", table_name,
                    rollback_triggers={"window_seconds": 30, "check_seconds": 0.5, "min_write_samples": 50})
    handle = await dw.start(spec)
    await dw.advance_to(handle, "CUTOVER_READS")
    feed_stats(pg_old, name, secondary_ok=500, shadow_match=300)  # healthy: nothing trips
    await asyncio.sleep(2)  # a few checks
    assert (await dw.status(handle)).phase == "CUTOVER_READS"

    # the new store starts failing: 60 of 560 mirrored writes in the window (10.7 % > 1 %)
    feed_stats(pg_old, name, secondary_ok=0, secondary_failed=60)
    st_ = await dw.wait(handle, lambda s: s.phase == "SHADOW_READ" and s.hold is not None, "automatic rollback")
    auto = [t for t in st_.transitions if t.kind == "auto-rollback"]
    assert [(t.from_phase, t.to_phase, t.by) for t in auto] == [("CUTOVER_READS", "SHADOW_READ", "auto-rollback")]
    assert "new_store_error_rate" in auto[0].reason and "unavailable 60" in auto[0].reason
    assert st_.hold.by == "auto-rollback" and "CUTOVER_READS" in st_.hold.reason
    assert st_.counters["auto_rollbacks"] == 1
    assert st_.triggers is not None and st_.triggers.tripped
    errors = next(m for m in st_.triggers.metrics if m.name == "new_store_error_rate")
    assert errors.verdict.value == "fail" and errors.samples == 560 and errors.threshold == 0.01
    state = control.read_state(pg_old, name)
    assert state is not None and state.phase == "SHADOW_READ"

    # held: no advance until an operator releases it
    assert "held" in await dw.rejected(handle, "advance")
    st_ = await dw.settled(handle, "SHADOW_READ")
    assert (await dw.update(handle, "hold", release=True, by="ops", reason="new store fixed")).ok
    assert [t.kind for t in (await dw.status(handle)).transitions][-2:] == ["hold", "release"] or \
        [t.kind for t in (await dw.status(handle)).transitions][-1] == "release"
    await handle.terminate("test over")


# ---------------------------------------------------------------------------------------------------------
# rollback from CUTOVER_WRITES under live writes


class LiveApp:
    """An application instance that follows the published phase like the adapter: it adopts the control
    state, records the epoch it acts on, writes the authoritative store first and mirrors to the other.
    Every acknowledged write is remembered, so the test can prove none was lost."""

    def __init__(self, old: Store, new: Store, migration: str, table: str, *, instance: str = "app-live") -> None:
        self.old, self.new, self.migration, self.table, self.instance = old, new, migration, table, instance
        self.forward = identity_mapping(old.describe(table, refresh=True), new.describe(table, refresh=True),
                                        version="version")
        self.backward = self.forward.reversed()
        self.expected: dict[int, str | None] = {}
        self.rnd = random.Random(7)
        self.next_id = 2_000_000
        self.counter = 0
        self.lose = 0  # the next N mirrors fail (their keys go to the repair queue)
        self.crash = 0  # the next N mirrors are lost without a trace (a crash between the two writes)
        self.phases_seen: set[str] = set()
        self.stop = threading.Event()

    def step(self) -> None:
        state = control.read_state(self.old, self.migration)
        assert state is not None
        phase = state.phase
        self.phases_seen.add(phase)
        control.record_instance_seen(self.old, self.migration, self.instance, state.epoch)
        new_first = phases.authoritative(Phase(phase)) == "new"
        first, second = (self.new, self.old) if new_first else (self.old, self.new)
        mapping = self.backward if new_first else self.forward
        keys: list[int] = []
        values: dict[int, str | None] = {}
        with first.connect() as conn:
            cur = conn.cursor()
            for _ in range(5):
                self.counter += 1
                value: str | None = f"w{self.counter}"
                roll = self.rnd.random()
                if roll < 0.3:
                    self.next_id += 1
                    key = self.next_id
                    cur.execute(f"INSERT INTO {self.table} VALUES (%s, %s, 1.0, '2025-01-01', 1)", (key, value))
                elif roll < 0.9:
                    key = self.rnd.randint(1, 1500)
                    cur.execute(f"UPDATE {self.table} SET name = %s, version = version + 1 WHERE id = %s",
                                (value, key))
                    if cur.rowcount == 0:
                        continue
                else:
                    key = self.rnd.randint(1, 1500)
                    cur.execute(f"DELETE FROM {self.table} WHERE id = %s", (key,))
                    value = None
                keys.append(key)
                values[key] = value
            conn.commit()
        self.expected.update(values)  # acknowledged
        if self.lose:
            self.lose -= 1
            control.enqueue_repair(self.old, self.migration, self.table, [(k,) for k in keys],
                                   reason="secondary timed out", authoritative="new" if new_first else "old")
        elif self.crash:
            self.crash -= 1
        else:
            mirror_keys(first, second, mapping, [(k,) for k in keys])

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def lost(self, store: Store) -> dict[int, tuple[str | None, str | None]]:
        """Acknowledged writes that ``store`` does not hold: key -> (expected, found)."""
        found = {int(str(r[0])): str(r[1]) for r in fetch_all(store, f"SELECT id, name FROM {self.table}")}
        return {k: (v, found.get(k)) for k, v in self.expected.items() if found.get(k) != v}


def _adapter_store(like: Store) -> Store:
    """A store whose connections are marked as the adapter's own (as DualWriter's pools are)."""
    store = Store(StoreRef(like.name, like.engine.url.render_as_string(hide_password=False)), pool_size=2)
    sa.event.listen(store.engine, "do_connect",
                    lambda _d, _r, _a, cparams: bypass.connect_options(store.dialect, cparams))
    return store


async def test_rollback_from_cutover_writes_under_live_writes_loses_nothing(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 1500)
    create_pg(pg_new, table_name, 0)
    name = _name("live")
    handle = await dw.start(spec_for(name, "pgold", "pgnew", table_name))
    await dw.advance_to(handle, "CUTOVER_READS")
    # the app writes as the adapter does: its connections carry the adapter's mark (bypass capture skips them)
    app = LiveApp(_adapter_store(pg_old), _adapter_store(pg_new), name, table_name)
    writer = threading.Thread(target=app.run, daemon=True)
    writer.start()
    try:
        res = await dw.update(handle, "advance", by="hal", reason="write cutover")
        assert res.ok and res.phase == "CUTOVER_WRITES", res.message
        await dw.settled(handle, "CUTOVER_WRITES")
        await eventually(lambda: "CUTOVER_WRITES" in app.phases_seen, 10, "the app writes new first")
        app.lose, app.crash = 3, 3  # acknowledged by the new store; their mirrors to the old one fail or vanish
        await eventually(lambda: app.lose == 0 and app.crash == 0, 10, "failed mirrors")
        assert app.lost(pg_old), "the old store should be missing some acknowledged writes by now"

        res = await dw.update(handle, "rollback", to="CUTOVER_READS", reason="p99 regression", by="hal")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        st_ = await dw.settled(handle, "CUTOVER_READS")
        await eventually(lambda: app.counter > 0 and "CUTOVER_READS" in app.phases_seen, 10, "old first again")
        await asyncio.sleep(0.5)
    finally:
        app.stop.set()
        await asyncio.to_thread(writer.join)
        control.forget_instance(pg_old, name, app.instance)
        app.old.dispose()
        app.new.dispose()
    assert app.lost(pg_old) == {}, "an acknowledged write was lost by the rollback"
    # settle what was mirrored after the last verification, then both stores agree
    before = st_.counters["verifications"]
    assert (await dw.update(handle, "verify", reason="final")).ok
    st_ = await dw.wait(handle, lambda s: s.counters["verifications"] > before, "final verification")
    assert st_.last_verification is not None and st_.last_verification.ok
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
    rb = [t for t in st_.transitions if t.kind == "rollback"][-1]
    assert (rb.from_phase, rb.to_phase, rb.reason) == ("CUTOVER_WRITES", "CUTOVER_READS", "p99 regression")
    assert st_.counters["rows_repaired"] >= 1
    await handle.terminate("test over")
    await save_histories(dw.client, handle.id, "rollback-live")


# ---------------------------------------------------------------------------------------------------------
# tenants, and the point of no return


PG_TENANT_DDL = "CREATE TABLE {t} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, version bigint)"


async def test_tenants_move_one_by_one_and_cleanup_is_the_point_of_no_return(
        dw: MigrationDriver, pg_old: Store, pg_new: Store, table_name: str) -> None:
    execute(pg_old, PG_TENANT_DDL.format(t=table_name),
            f"INSERT INTO {table_name} SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'beta' END, 'n' || g, 1 "
            "FROM generate_series(1, 400) g")
    execute(pg_new, PG_TENANT_DDL.format(t=table_name))
    name = _name("tenants")
    spec = spec_for(name, "pgold", "pgnew", table_name, tenants={"column": "tenant", "ids": ["acme", "beta"]})
    assert spec.tables[0].tenant_column == "tenant"
    handle = await dw.start(spec)
    await dw.advance_to(handle, "SHADOW_READ")

    # acme runs ahead: its own gate, its own phase, published as an override the adapter reads
    for to in ("CUTOVER_READS", "CUTOVER_WRITES"):
        res = await dw.update(handle, "advance", tenant="acme", by="tia", reason=f"canary {to}")
        assert res.ok and res.phase == to and res.tenant == "acme", res.message
        assert res.gate is not None and res.gate.passed and res.gate.tenant == "acme"
        st_ = await dw.wait(handle, lambda s, want=to: all(not t.work_state for t in s.tenants)
                            and {t.tenant: t.phase for t in s.tenants}["acme"] == want, f"acme in {to}")
    state = control.read_state(pg_old, name)
    assert state is not None and state.phase == "SHADOW_READ"
    assert state.overrides == {"tenants": {"acme": "CUTOVER_WRITES"}}
    rows = {t.tenant: t for t in st_.tenants}
    assert (rows["acme"].own, rows["acme"].authoritative, rows["acme"].reads_from) == (True, "new", "new")
    assert (rows["beta"].own, rows["beta"].authoritative, rows["beta"].phase) == (False, "old", "SHADOW_READ")
    assert "CLEANUP is migration-wide" in await dw.rejected(handle, "advance", tenant="acme")
    assert "follows the migration" in await dw.rejected(handle, "rollback", tenant="beta", reason="x")

    # acme writes (acknowledged by the new store, its authority) whose mirror to old crashed; and a beta row
    # corrupted in the new store (old is beta's authority)
    execute(pg_new, f"UPDATE {table_name} SET name = 'acme-new', version = 2 WHERE id = 2",
            f"UPDATE {table_name} SET name = 'beta-corrupt' WHERE id = 3")
    # a migration-wide verification repairs beta's row from old, and leaves acme's rows alone
    before = st_.counters["verifications"]
    assert (await dw.update(handle, "verify", reason="spot check")).ok
    await dw.wait(handle, lambda s: s.counters["verifications"] > before, "verification")
    assert fetch_all(pg_new, f"SELECT name FROM {table_name} WHERE id IN (2, 3) ORDER BY id") == [
        ("acme-new",), ("n3",)]

    # acme's own rollback out of CUTOVER_WRITES first brings acme's old rows level (and only acme's)
    execute(pg_new, f"UPDATE {table_name} SET name = 'beta-corrupt' WHERE id = 3")
    res = await dw.update(handle, "rollback", tenant="acme", reason="canary errors", by="tia")
    assert res.ok and res.phase == "CUTOVER_READS", res.message
    assert fetch_all(pg_old, f"SELECT name FROM {table_name} WHERE id IN (2, 3) ORDER BY id") == [
        ("acme-new",), ("n3",)]
    st_ = await dw.wait(handle, lambda s: all(not t.work_state for t in s.tenants), "acme settled")
    assert control.read_state(pg_old, name).overrides == {"tenants": {"acme": "CUTOVER_READS"}}  # type: ignore[union-attr]
    rb = [t for t in st_.transitions if t.kind == "rollback"][-1]
    assert (rb.tenant, rb.from_phase, rb.to_phase) == ("acme", "CUTOVER_WRITES", "CUTOVER_READS")

    # a hold on one tenant stops only that tenant
    assert (await dw.update(handle, "hold", tenant="beta", reason="big customer, wait", by="tia")).ok
    assert "held" in await dw.rejected(handle, "advance", tenant="beta")
    assert (await dw.update(handle, "hold", tenant="beta", release=True)).ok

    # the migration catches up: acme follows it again
    await dw.advance_to(handle, "CUTOVER_READS")
    st_ = await dw.status(handle)
    assert all(not t.own for t in st_.tenants) and control.read_state(pg_old, name).overrides == {}  # type: ignore[union-attr]
    await dw.advance_to(handle, "CUTOVER_WRITES")

    # CLEANUP: its own confirmation, and --drop asks again (the migration's name)
    triggers.install_triggers(pg_new, name, table_name, ["id"])
    outbox.ensure_log(pg_new, outbox.OUTBOX)
    execute(pg_new, f"INSERT INTO {outbox.OUTBOX} (migration, table_name, key_json) VALUES ('{name}', "
                    f"'{table_name}', '[7]')")
    assert "point of no return" in await dw.rejected(handle, "advance")
    assert "confirm_drop" in await dw.rejected(handle, "advance", confirm_cleanup=True, drop_old_tables=True)
    dry = await dw.update(handle, "advance", dry_run=True, confirm_cleanup=True, drop_old_tables=True,
                          confirm_drop=name)
    assert dry.ok and any("DROPPED" in w for w in dry.would) and any("POINT OF NO RETURN" in w for w in dry.would)
    res = await dw.update(handle, "advance", confirm_cleanup=True, drop_old_tables=True, confirm_drop=name,
                          by="tia", reason="done")
    assert res.ok and res.phase == "CLEANUP", res.message
    st_ = await dw.settled(handle, "CLEANUP")
    assert st_.retirement is not None and [(t.source, t.action) for t in st_.retirement.tables] == [
        (table_name, "dropped")]
    assert table_name not in pg_old.table_names()
    assert not triggers.installed(pg_new, name, table_name)
    assert outbox.log_depth(pg_new, name)[0] == 0 if outbox.OUTBOX in pg_new.table_names() else True
    entered = [t for t in st_.transitions if t.to_phase == "CLEANUP" and t.kind == "advance"][-1]
    assert "CLEANUP confirmed" in entered.reason and "DROPPED" in entered.reason
    assert "point of no return" in await dw.rejected(handle, "rollback", reason="too late")
    assert "point of no return" in await dw.rejected(handle, "rollback", tenant="acme", reason="too late")
    await handle.terminate("test over")
    await save_histories(dw.client, handle.id, "tenants")


# ---------------------------------------------------------------------------------------------------------
# a random operator sequence against the real workflow (the property test's end-to-end sample)


async def test_a_random_operator_sequence_keeps_the_invariants(dw: MigrationDriver, pg_old: Store,
                                                               pg_new: Store, table_name: str) -> None:
    create_pg(pg_old, table_name, 200)
    create_pg(pg_new, table_name, 0)
    name = _name("random")
    spec = spec_for(name, "pgold", "pgnew", table_name, gates={"require_approval": True},
                    tenants={"column": "name", "ids": ["name-2"]})
    handle = await dw.start(spec, tuning=fast_tuning())
    await dw.settled(handle, "PREPARE")
    # seed 18 moves the migration and the tenant ahead and back (DUALWRITE_TEST_SEED explores others)
    rnd = random.Random(int(os.environ.get("DUALWRITE_TEST_SEED", "18")))
    broken = False
    ops = (["advance"] * 8 + ["advance-tenant"] * 3 + ["approve"] * 3 + ["resume", "release", "fix"] * 2
           + ["force", "rollback", "rollback-tenant", "pause", "approve-tenant", "hold", "break"])
    for _ in range(40):
        op = rnd.choice(ops)
        kw: dict[str, Any] = {"by": "random", "reason": f"random {op}"}
        if op == "break":  # an unrepairable queued key holds every gate
            control.enqueue_repair(pg_old, name, "no_such_table", [(1,)], reason="test")
            broken = True
            continue
        if op == "fix":
            execute(pg_old, f"DELETE FROM dualwrite_repair_queue WHERE migration = '{name}'")
            broken = False
            continue
        update = {"advance-tenant": "advance", "force": "advance", "rollback-tenant": "rollback",
                  "approve-tenant": "approve", "release": "hold"}.get(op, op)
        if op.endswith("-tenant"):
            kw["tenant"] = "name-2"
        if op == "advance-tenant":  # the canary path: approve it first when the spec asks for approvals
            with contextlib.suppress(Exception):
                await dw.update(handle, "approve", tenant="name-2", by="random")
        if op == "force":
            kw["force"] = True
        if op == "release":
            kw["release"] = True
        if update in ("advance", "approve") and "tenant" not in kw:
            kw["confirm_cleanup"] = True
        try:
            res = await dw.update(handle, update, **kw)
        except WorkflowUpdateFailedError:  # rejected by the validator: nothing happened
            continue
        if res.ok and update in ("advance", "rollback"):
            await dw.wait(handle, lambda s: not s.waiting_for.startswith(("barrier", "verifying", "publishing",
                                                                          "transition", "draining"))
                          and all(not t.work_state for t in s.tenants), "settled", 60)
        st_ = await dw.status(handle)
        if st_.phase == "DONE":
            break
    st_ = await dw.status(handle)
    for t in st_.transitions:
        if t.to_phase in ("CUTOVER_READS", "CUTOVER_WRITES") and t.kind in ("advance", "force", "auto"):
            assert t.gate_passed or (t.kind == "force" and t.reason), t
            if broken is False and t.kind == "advance":
                assert t.gate_passed
    state = control.read_state(pg_old, name)
    assert state is not None and (state.phase, state.epoch) == (st_.phase, st_.epoch)
    own = {t.tenant: Phase(t.phase) for t in st_.tenants if t.own}
    assert state.overrides == phases.overrides_for(Phase(st_.phase), own)
    if Phase(st_.phase).rank >= Phase.CLEANUP.rank:
        assert "point of no return" in await dw.rejected(handle, "rollback", reason="x")
    elif st_.phase != "PREPARE" and not st_.waiting_for.startswith("transition"):
        res = await dw.update(handle, "rollback", reason="the end", dry_run=True)
        assert res.ok, res.message
    await handle.terminate("test over")

