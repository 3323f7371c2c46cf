"""Gate and trigger metrics at their exact boundaries: at the threshold, one sample short, one past it.

These are the numbers an operator argues about at 3 a.m., so they are decided in exact decimal
arithmetic and tested exactly: 999 matches of 1,000 is 99.9 %, which is not "> 99.9 %".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dualwrite import gates as g
from dualwrite import stats as st
from dualwrite.spec import Gates, RollbackTriggers

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def traffic(**kw: object) -> g.TrafficFacts:
    return g.TrafficFacts.model_validate(kw)


@pytest.mark.parametrize(("match", "total", "verdict"), [
    (999, 1000, "fail"),      # exactly 99.9 %: not > 99.9 %
    (1000, 1000, "pass"),
    (9991, 10000, "pass"),    # 99.91 %
    (998, 999, "not-yet"),    # one sample short (and would pass otherwise)
    (0, 0, "not-yet"),
])
def test_shadow_match_rate_boundaries(match: int, total: int, verdict: str) -> None:
    t = traffic(shadow_match=match, shadow_mismatch={"field_different": total - match})
    m = g.shadow_match_metric(t, Gates())
    assert m.verdict.value == verdict, m
    assert m.samples == total and m.min_samples == 1000 and m.threshold == 0.999 and m.op == ">"
    assert m.ok is (verdict == "pass")


@pytest.mark.parametrize(("ok", "failed", "verdict"), [
    (19990, 10, "fail"),      # exactly 99.95 %
    (19991, 9, "pass"),
    (999, 0, "not-yet"),      # 999 of the 1,000 needed
    (1000, 0, "pass"),
])
def test_secondary_write_success_boundaries(ok: int, failed: int, verdict: str) -> None:
    t = traffic(secondary_success=ok, secondary_failure={"timeout": failed} if failed else {})
    m = g.write_success_metric(t, Gates())
    assert m.verdict.value == verdict, m
    if failed:
        assert "timeout 10" in m.detail or "timeout 9" in m.detail


@pytest.mark.parametrize(("call", "direct", "samples", "verdict"), [
    (1.2, 1.0, 1000, "fail"),     # exactly +20 %: not < 20 %
    (1.19, 1.0, 1000, "pass"),
    (0.6, 0.5, 1000, "fail"),     # +20 % again, with values that are not exact in binary
    (1.19, 1.0, 999, "not-yet"),  # one sample short
])
def test_p99_latency_impact_boundaries(call: float, direct: float, samples: int, verdict: str) -> None:
    m = g.latency_metric(traffic(p99_call_ms=call, p99_direct_ms=direct, latency_samples=samples), Gates())
    assert m.verdict.value == verdict, m


def test_zero_minimum_means_not_required_but_samples_still_count() -> None:
    lax = Gates(min_shadow_samples=0, min_write_samples=0, min_latency_samples=0)
    assert [m.verdict.value for m in g.traffic_metrics(traffic(), lax)] == ["n/a"] * 3
    assert all(m.ok for m in g.traffic_metrics(None, lax))
    # with samples, the threshold applies even when the minimum is 0
    assert g.shadow_match_metric(traffic(shadow_match=1, shadow_mismatch={"missing": 1}), lax).verdict.value == "fail"
    # and without statistics, a real minimum is "not yet", never a pass
    assert [m.verdict.value for m in g.traffic_metrics(None, Gates())] == ["not-yet"] * 3


def test_reconciliation_needs_a_recent_verification_in_the_right_direction() -> None:
    window = 300.0
    fresh = g.ReconFacts(at=NOW - timedelta(seconds=window), direction="old->new", rows_compared=10)
    assert g.reconciliation_metric(fresh, NOW, window).verdict.value == "pass"  # exactly the window: young enough
    old = fresh.model_copy(update={"at": NOW - timedelta(seconds=window + 1)})
    assert g.reconciliation_metric(old, NOW, window).verdict.value == "not-yet"
    wrong = fresh.model_copy(update={"direction": "new->old"})
    assert "needs old->new" in g.reconciliation_metric(wrong, NOW, window).detail
    assert g.reconciliation_metric(g.ReconFacts(), NOW, window).verdict.value == "not-yet"
    empty = fresh.model_copy(update={"rows_compared": 0})
    assert g.reconciliation_metric(empty, NOW, window).verdict.value == "fail"
    gap = fresh.model_copy(update={"unresolved": 1, "problems": ["orders: 1 unresolved, fields name, keys 42"]})
    m = g.reconciliation_metric(gap, NOW, window)
    assert m.verdict.value == "fail" and m.value == 1 and "keys 42" in m.detail


@pytest.mark.parametrize(("bad", "total", "tripped"), [
    (1, 100, False),    # exactly 1 %: at the limit, not over it
    (2, 100, True),
    (50, 99, False),    # one sample short: never trips
])
def test_rollback_trigger_boundaries(bad: int, total: int, tripped: bool) -> None:
    cfg = RollbackTriggers()
    reads = g.evaluate_triggers(traffic(secondary_success=total - bad, secondary_failure={"unavailable": bad}),
                                "CUTOVER_READS", cfg)
    assert reads.tripped is tripped, reads
    if tripped:
        assert "new_store_error_rate" in reads.reason and "unavailable" in reads.reason
    # after write cutover the new store is the primary: its failures are the primary's
    writes = g.evaluate_triggers(traffic(primary_success=total - bad, primary_failure={"timeout": bad},
                                         secondary_failure={"x": 1000}), "CUTOVER_WRITES", cfg)
    assert writes.tripped is tripped
    shadow = g.evaluate_triggers(traffic(shadow_match=total - bad, shadow_mismatch={"missing": bad}),
                                 "CUTOVER_READS", cfg)
    assert shadow.tripped is tripped


def test_traffic_facts_merge_every_instance_window() -> None:
    a, b = st.StatsWindow(instances={"a"}), st.StatsWindow(instances={"b"})
    for w in (a, b):
        w.add(st.SHADOW, "match", 500)
        w.add(st.SECONDARY, "success", 600)
        for _ in range(600):
            w.observe(st.LAT_CALL, 0.4)
            w.observe(st.LAT_DIRECT, 0.35)
    b.add(st.SECONDARY, "failure:timeout", 2)
    b.add(st.SHADOW, "field_different", 1)
    merged = st.StatsWindow().merge(a).merge(b)
    t = g.TrafficFacts.from_window(merged, scope="m", seconds=300)
    assert (t.instances, t.shadow_samples, t.secondary_success, t.secondary_failures) == (2, 1001, 1200, 2)
    assert t.latency_samples == 1200 and t.p99_call_ms is not None and t.p99_direct_ms is not None
    assert g.shadow_match_metric(t, Gates()).verdict.value == "pass"
    assert g.write_success_metric(t, Gates()).verdict.value == "fail"  # 99.83 %


@pytest.mark.parametrize(("lag", "verdict"), [(5.0, "pass"), (5.001, "fail"), (0.0, "pass")])
def test_async_lag_is_part_of_the_gate_when_an_instance_writes_async(lag: float, verdict: str) -> None:
    a, b = st.StatsWindow(instances={"a"}), st.StatsWindow(instances={"b"})
    a.gauge(st.ASYNC_AGE, 0.2)
    a.gauge(st.ASYNC_DEPTH, 3)
    b.gauge(st.ASYNC_AGE, lag)
    b.gauge(st.ASYNC_DEPTH, 40)
    t = g.TrafficFacts.from_window(st.StatsWindow().merge(a).merge(b), scope="m", seconds=300)
    metrics = {m.name: m for m in g.traffic_metrics(t, Gates())}  # default: at most 5 s behind
    lagm = metrics["async_lag_seconds"]
    assert lagm.verdict.value == verdict and lagm.value == max(lag, 0.2)
    assert "40 keys queued" in lagm.detail
    # without any async instance the gate has no such metric (nothing to hold)
    assert "async_lag_seconds" not in {m.name for m in g.traffic_metrics(traffic(), Gates())}


def test_status_shows_the_async_lag_in_seconds() -> None:
    from rich.console import Console

    from starter.render import gate_section

    facts = g.TrafficFacts(async_lag_seconds=0.25, async_depth=12)
    m = g.async_lag_metric(facts, Gates())
    console = Console(width=200, record=True)
    console.print(gate_section({"to": "CUTOVER_READS", "passed": True, "metrics": [m.model_dump(mode="json")]},
                               console=console))
    text = console.export_text()
    assert "async_lag_seconds" in text and "0.25 s" in text and "<= 5 s" in text and "12 keys queued" in text


def test_evidence_follows_the_capture_method_facts_for_cdc_as_for_triggers() -> None:
    """cdc has no adapter in the application, like triggers: the worker's samples are the shadow evidence,
    the relay's mirrors the secondary writes, the relay's lag holds the gate, latency is not applicable."""
    from dualwrite.capture import method_for

    facts = traffic(sampled_match=2000, relay_mirrored=5000, relay_lag_seconds=3.0, shadow_match=0)
    for strategy in ("triggers", "cdc", method_for("cdc")):
        metrics = {m.name: m for m in g.traffic_metrics(facts, Gates(), strategy)}
        assert metrics["shadow_match_rate"].source == g.WORKER_SAMPLE_SOURCE
        assert metrics["shadow_match_rate"].verdict == "pass", metrics["shadow_match_rate"]
        assert metrics["secondary_write_success_rate"].source == g.RELAY_SOURCE
        assert metrics["relay_lag_seconds"].verdict == "pass"
        assert metrics["p99_latency_impact"].verdict == "n/a"
    sources = dict(g.evidence_sources("cdc"))
    assert "the database's log" in sources["secondary_write_success_rate"]
    assert "not applicable" in sources["p99_latency_impact"] and "relay_lag_seconds" in sources
    assert [m.name for m in g.traffic_metrics(facts, Gates(), "outbox")] == [
        "shadow_match_rate", "secondary_write_success_rate", "p99_latency_impact"]


def test_relay_lag_unmeasured_is_not_yet_unless_the_spec_asks_for_no_write_samples() -> None:
    assert g.relay_lag_metric(traffic(), Gates()).verdict == "not-yet"
    assert g.relay_lag_metric(traffic(), Gates(min_write_samples=0)).verdict == "n/a"
    assert g.relay_lag_metric(traffic(relay_lag_seconds=90.0), Gates(min_write_samples=0)).verdict == "fail"


def test_cdc_rollback_triggers_read_the_worker_samples_and_the_relay() -> None:
    facts = traffic(sampled_match=900, sampled_mismatch={"missing": 100}, relay_mirrored=900, relay_failed=100)
    cfg = RollbackTriggers(min_shadow_samples=100, min_write_samples=100)
    ev = g.evaluate_triggers(facts, "CUTOVER_READS", cfg, "cdc")
    assert ev.tripped and {m.name for m in ev.metrics if m.verdict == "fail"} == {
        "shadow_mismatch_rate", "new_store_error_rate"}, ev
    assert not g.evaluate_triggers(facts, "CUTOVER_READS", cfg, "sync").tripped


def test_the_repair_queue_metric_counts_the_keys_of_the_scope_that_moves() -> None:
    """A tenant's gate is held by its own queued keys only; the others are named, not counted ([T2-5])."""
    tables = [g.RepairTable(table="orders", keys=3, of_scope=1, attempts=4),
              g.RepairTable(table="plans", keys=2, of_scope=0, attempts=1)]
    held = g.repair_queue_metric(5, g.RepairFacts(scope="tenant acme", queued=5, of_scope=1, tables=tables))
    assert (held.verdict, held.value) == (g.Verdict.FAIL, 1.0)
    assert held.detail == ("1 keys of tenant acme wait in the repair queue (table orders: 1 key(s) after 4 "
                           "attempt(s)) (4 key(s) of other tenants or shared tables wait for their own move: table "
                           "orders: 2 key(s) after 4 attempt(s); table plans: 2 key(s) after 1 attempt(s))")
    free = g.repair_queue_metric(2, g.RepairFacts(scope="tenant beta", queued=2, of_scope=0, tables=tables[1:]))
    assert (free.verdict, free.value) == (g.Verdict.PASS, 0.0)
    assert free.detail.startswith("no key of tenant beta waits for repair (2 key(s) of other tenants")
    whole = g.repair_queue_metric(1, g.RepairFacts(scope="the migration", queued=5, of_scope=5, tables=[
        t.model_copy(update={"of_scope": t.keys}) for t in tables]))
    assert whole.verdict is g.Verdict.FAIL and whole.detail.startswith("5 keys wait in the repair queue (table orders")
    assert g.repair_queue_metric(1).detail == "1 keys wait in the repair queue"  # no facts: the workflow's count
