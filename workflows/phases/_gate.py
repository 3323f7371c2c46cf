"""The gate of a transition, decided from its evidence (the ``evaluate_gate`` activity runs it; its result
lands in history)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dualwrite import gates as g
from dualwrite.spec import MigrationSpec
from workflows.models import GateInput, GateResult, VerificationSummary
from workflows.phases._meaning import GATED, TRAFFIC_GATED, verification_reverse


def _recon_facts(v: VerificationSummary | None, expected: str, allowed_empty: frozenset[str] = frozenset()
                 ) -> g.ReconFacts:
    if v is None:
        return g.ReconFacts(expected_direction=expected)
    # a clean verification of tables that are all empty and allowed to be (spec ``allow_empty``)
    empty_allowed = v.ok and bool(v.tables) and all(
        t.source in allowed_empty and t.rows_source == 0 and t.rows_target == 0 and not t.error for t in v.tables)
    problems: list[str] = []
    unresolved = 0
    for t in v.tables:
        left = t.unresolved if (t.unresolved or t.ok) else (t.missing + t.extra + t.field_different)
        if t.ok and not t.error:
            continue
        unresolved += left
        parts = [f"{t.source}: {left} unresolved (missing {t.missing}, extra {t.extra}, field-different "
                 f"{t.field_different})"]
        if t.fields:
            parts.append("fields " + ", ".join(t.fields))
        if t.sample_keys:
            parts.append("keys " + ", ".join(str(k if len(k) != 1 else k[0]) for k in t.sample_keys))
        if t.error:
            parts.append(t.error)
        problems.append(", ".join(parts))
    if not v.ok and unresolved == 0:
        unresolved = v.unresolved or (v.missing + v.extra + v.field_different) or 1
        if not problems:
            problems.append("the verification did not complete")
    return g.ReconFacts(at=v.at, direction=v.direction, expected_direction=expected, rows_compared=v.rows_compared,
                        unresolved=0 if v.ok else unresolved, repaired=v.repaired, problems=problems,
                        empty_allowed=empty_allowed)


def evaluate_gate(inp: GateInput, traffic: g.TrafficFacts | None = None,
                  spec: MigrationSpec | None = None, repairs: g.RepairFacts | None = None) -> GateResult:
    """Decide a gated transition from its evidence (recorded in history: counts, thresholds, a few keys).

    Into CUTOVER_READS and CUTOVER_WRITES: backfill 100 %, shadow-read match rate, secondary write success
    rate and p99 latency impact over the window (each with its minimum sample count), no unresolved
    difference in a verification younger than the window (in the current authority's direction), an empty
    repair queue (``repairs``: the keys of the scope that moves, read by the activity; else the workflow's
    count of the whole queue), and an approval when the spec asks for one. Into CLEANUP the traffic metrics do not
    apply (the old store is about to be retired), the rest does.
    """
    if inp.to not in GATED:
        return GateResult(passed=True, to=inp.to, checks={}, evidence={"gated": False}, tenant=inp.tenant,
                          at=inp.at)
    spec = spec or inp.inline_spec()  # the activity resolved a spec_ref; tests pass the spec inline
    gates = spec.gates
    v = inp.last_verification
    now = inp.at or (v.at if v is not None else datetime.min)
    expected = "new->old" if verification_reverse(inp.phase) else "old->new"
    metrics = [g.backfill_metric(inp.backfill_percent, inp.backfill_done, len(spec.tables))]
    if inp.to in TRAFFIC_GATED:
        metrics += g.traffic_metrics(traffic, gates, spec.strategy.value)
    allowed_empty = frozenset(t.source for t in spec.tables if t.allow_empty)
    metrics.append(g.reconciliation_metric(_recon_facts(v, expected, allowed_empty), now, gates.window_seconds))
    metrics.append(g.repair_queue_metric(inp.repair_queue_depth, repairs))
    if gates.require_approval:
        metrics.append(g.approval_metric(inp.approved, inp.to.value))
    evidence: dict[str, Any] = {"window_seconds": gates.window_seconds}
    if traffic is not None and inp.to in TRAFFIC_GATED:
        evidence["stats_scope"] = traffic.scope
        evidence["instances"] = traffic.instances
        evidence["sources"] = {m.name: m.source for m in metrics if m.source}
    if repairs is not None:
        evidence["repair_queue"] = repairs.model_dump(mode="json")
    if v is not None:
        evidence["verification"] = {"at": v.at.isoformat(), "ok": v.ok, "rows_compared": v.rows_compared,
                                    "missing": v.missing, "extra": v.extra, "field_different": v.field_different,
                                    "repaired": v.repaired, "direction": v.direction}
    return GateResult(passed=all(m.ok for m in metrics), to=inp.to, checks={m.name: m.ok for m in metrics},
                      evidence=evidence, reasons=g.reasons(metrics), metrics=metrics, tenant=inp.tenant,
                      at=inp.at, traffic=traffic if inp.to in TRAFFIC_GATED else None)
