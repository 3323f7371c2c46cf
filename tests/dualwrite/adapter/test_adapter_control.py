"""The control plane as applications see it: per-tenant / per-entity overrides, the sticky ramp, the epoch
each instance records (the phase barrier waits for a lagging one), and live statistics that merge across
instances (and show up as Prometheus metrics)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from app.harness import make_migration

from dualwrite import control, outbox
from dualwrite import stats as st
from dualwrite.adapter import AdapterOptions, DualWriter, PhaseCache, ramp_bucket
from dualwrite.adapter.phase import resolve
from dualwrite.store import Store

NOW = "2025-01-01 00:00:00"


def test_overrides_most_specific_wins() -> None:
    ov = {"tenants": {"acme": "CUTOVER_WRITES", "beta": "PREPARE"},
          "entities": {"customers:7": "SHADOW_READ"},
          "ramp": {"phase": "CUTOVER_READS", "percent": 100, "by": "tenant"}}
    assert resolve("m", "DUAL_WRITE", ov, tenant="acme") == ("CUTOVER_WRITES", "tenant")
    assert resolve("m", "DUAL_WRITE", ov, tenant="acme", entity="customers:7") == ("SHADOW_READ", "entity")
    assert resolve("m", "DUAL_WRITE", ov, tenant="zeta") == ("CUTOVER_READS", "ramp")
    assert resolve("m", "DUAL_WRITE", ov) == ("DUAL_WRITE", "global")  # no subject: not ramped
    assert resolve("m", "DUAL_WRITE", {"tenants": {"x": "NOT_A_PHASE"}}, tenant="x") == ("DUAL_WRITE", "global")


def test_ramp_is_sticky_and_monotonic() -> None:
    tenants = [f"tenant-{i}" for i in range(2000)]
    picked = {}
    for pct in (1, 10, 25, 50, 90):
        ov = {"ramp": {"phase": "CUTOVER_READS", "percent": pct}}
        picked[pct] = {t for t in tenants if resolve("mig", "SHADOW_READ", ov, tenant=t)[0] == "CUTOVER_READS"}
        assert abs(len(picked[pct]) / len(tenants) - pct / 100) < 0.04, (pct, len(picked[pct]))
    # raising the percentage only adds tenants; nobody flips back
    assert picked[1] <= picked[10] <= picked[25] <= picked[50] <= picked[90]
    # the bucket is a pure function of (migration, salt, subject): every instance, every run agrees
    assert [ramp_bucket("mig", t) for t in tenants[:50]] == [ramp_bucket("mig", t) for t in tenants[:50]]
    assert {ramp_bucket("other-migration", t) for t in tenants[:50]} != {ramp_bucket("mig", t) for t in tenants[:50]}


def test_tenant_override_routes_writes_and_mirrors_the_right_way(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "outbox")
    try:
        t = m.models.customers
        m.publish("DUAL_WRITE", overrides={"tenants": {"vip": "CUTOVER_WRITES"},
                                           "ramp": {"phase": "CUTOVER_READS", "percent": 50}})
        w = m.writer
        assert w.route("vip").authoritative.value == "new"
        assert w.route("regular").authoritative.value == "old"
        ramped = [f"r{i}" for i in range(40) if w.route(f"r{i}").phase == "CUTOVER_READS"]
        assert 8 < len(ramped) < 32
        vip = m.shop.signup("vip", "Vera")      # the ORM routes by the object's tenant column
        reg = m.shop.signup("regular", "Rex")
        assert m.row("new", t, vip) is not None and m.row("old", t, vip) is None
        assert m.row("old", t, reg) is not None and m.row("new", t, reg) is None
        # each key was logged in the outbox of the store that was authoritative for it
        assert outbox.log_depth(m.new, m.name)[0] >= 1 and outbox.log_depth(m.old, m.name)[0] >= 1
        m.relay()
        assert m.diffs(t, [vip, reg]) == []
        # the same tenant routes the same way on another instance
        other = PhaseCache(m.control, m.name, "other-instance")
        assert [other.route(f"r{i}").phase for i in range(40)] == [w.route(f"r{i}").phase for i in range(40)]
    finally:
        m.close()


def test_barrier_waits_for_a_lagging_instance(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=False, phase_ttl=3600))
    second = DualWriter(m.spec, m.old, m.new, instance_id="lagging-instance",
                        options=AdapterOptions(background=False, phase_ttl=3600))
    try:
        m.publish("DUAL_WRITE")
        second.phase.refresh(force=True)
        epoch = m.epoch
        assert control.barrier(m.control, m.name, epoch).passed
        m.publish("BACKFILL")  # the first instance refreshes at once; the second is slow to
        state = control.barrier(m.control, m.name, m.epoch)
        assert state.lagging == ["lagging-instance"] and state.live == 2
        passed = threading.Event()

        def wait_barrier() -> None:  # what the workflow's barrier activity does
            while not control.barrier(m.control, m.name, m.epoch).passed:
                time.sleep(0.05)
            passed.set()

        waiter = threading.Thread(target=wait_barrier, daemon=True)
        waiter.start()
        assert not passed.wait(0.6)  # still waiting for the lagging instance
        assert second.route().phase == "DUAL_WRITE"  # it still acts on the old epoch
        second.phase.refresh(force=True)
        assert passed.wait(5)
        assert second.route().phase == "BACKFILL"
        # a cleanly stopping instance leaves the barrier at once
        second.close()
        assert control.barrier(m.control, m.name, m.epoch).live == 1
    finally:
        second.close()
        m.close()


def test_background_thread_keeps_the_phase_and_heartbeat_fresh(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=True, phase_ttl=0.1,
                                                                      heartbeat_seconds=0.2))
    try:
        control.publish_state(m.control, m.name, "SHADOW_READ", 50)
        deadline = time.monotonic() + 5
        while control.barrier(m.control, m.name, 50).lagging:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert m.writer.route().phase == "SHADOW_READ"
    finally:
        m.close()


def test_stats_windows_merge_across_instances(pg_old: Store, pg_new: Store) -> None:
    m = make_migration(pg_old, pg_new, "sync")
    second = DualWriter(m.spec, m.old, m.new, instance_id="second",
                        options=AdapterOptions(background=False))
    try:
        m.publish("SHADOW_READ")
        second.phase.refresh(force=True)
        t = m.models.customers
        keys = []
        for i, w in enumerate([m.writer, second, m.writer]):
            keys.append(w.insert(t, {"tenant": "s", "name": f"n{i}", "balance": Decimal(1), "active": True,
                                     "created_at": NOW}))
            w.read(t, keys[-1])
        for w in (m.writer, second):
            deadline = time.monotonic() + 5
            while w.shadow.in_flight() or w.scheduler.pending():
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert m.writer.flush_stats() and second.flush_stats()
        merged = st.read_stats(m.control, m.name, seconds=60)
        assert merged.instances == {m.writer.instance_id, "second"}
        assert merged.secondary_attempts == 3 and merged.secondary_successes == 3
        assert merged.secondary_success_rate() == 1.0
        assert merged.count("shadow", "match") == 3 and merged.shadow_samples == 3
        assert merged.histograms[st.LAT_CALL].count == 3 and merged.histograms[st.LAT_NEW].count == 3
        p99 = merged.quantile(st.LAT_CALL, 0.99)
        assert p99 is not None and p99 > 0
        assert merged.p99_write_latency_impact() is not None
        # flushing again with nothing new writes nothing; the windows are still there
        assert m.writer.flush_stats()
        assert st.read_stats(m.control, m.name, seconds=60).secondary_attempts == 3
    finally:
        second.close()
        m.close()


def test_histograms_merge_by_bucket() -> None:
    a, b = st.Histogram(), st.Histogram()
    for ms in (0.1, 0.2, 0.3):
        a.observe(ms)
    for ms in (5, 50, 500):
        b.observe(ms)
    w1, w2 = st.StatsWindow(), st.StatsWindow()
    w1.histograms["x"], w2.histograms["x"] = a, b
    merged = st.StatsWindow.from_json(w1.to_json()).merge(st.StatsWindow.from_json(w2.to_json()))
    h = merged.histograms["x"]
    assert h.count == 6 and abs(h.sum_ms - 555.6) < 1e-6
    assert h.quantile(0.5) is not None and h.quantile(0.5) <= 0.3
    assert h.quantile(1.0) is not None and h.quantile(1.0) >= 250


def test_prometheus_metrics(pg_old: Store, pg_new: Store) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    m = make_migration(pg_old, pg_new, "sync", options=AdapterOptions(background=False, prometheus=True,
                                                                      prometheus_registry=registry))
    try:
        m.publish("DUAL_WRITE")
        m.writer.insert(m.models.customers, {"tenant": "p", "name": "prom", "balance": 0, "active": True,
                                             "created_at": NOW})
        labels = {"migration": m.name, "outcome": "success", "error_class": ""}
        assert registry.get_sample_value("dualwrite_secondary_writes_total", labels) == 1.0
        assert registry.get_sample_value("dualwrite_latency_seconds_count",
                                         {"migration": m.name, "path": "call"}) == 1.0
    finally:
        m.close()


@pytest.mark.parametrize("phase", ["PREPARE", "CLEANUP"])
def test_no_mirror_phases_write_one_store_only(pg_old: Store, pg_new: Store, phase: str) -> None:
    m = make_migration(pg_old, pg_new, "sync")
    try:
        m.publish(phase)
        k = m.writer.insert(m.models.customers, {"tenant": "n", "name": "solo", "balance": 0, "active": True,
                                                 "created_at": NOW})
        auth, other = ("old", "new") if phase == "PREPARE" else ("new", "old")
        assert m.row(auth, m.models.customers, k[0]) is not None
        assert m.row(other, m.models.customers, k[0]) is None
        assert m.writer.stats.snapshot().secondary_attempts == 0
    finally:
        m.close()
