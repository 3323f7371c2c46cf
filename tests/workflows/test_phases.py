"""The phase machine's rules, without Temporal: every legal and illegal move, gates, auto mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dualwrite.spec import MigrationSpec
from workflows import phases
from workflows.models import PHASE_ORDER, GateInput, Phase, TransitionRequest, VerificationSummary
from workflows.phases import MachineView, Rejected

P = Phase
BEFORE_CLEANUP = [p for p in PHASE_ORDER if p.rank < P.CLEANUP.rank]


def req(**kw: object) -> TransitionRequest:
    return TransitionRequest(**kw)  # type: ignore[arg-type]


def rejected(fn: object, view: MachineView, r: TransitionRequest) -> str:
    with pytest.raises(Rejected) as info:
        fn(view, r)  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize("phase", PHASE_ORDER[:-1])
def test_advance_goes_to_the_next_phase(phase: Phase) -> None:
    nxt = phases.next_phase(phase)
    assert nxt is not None
    confirm = nxt is P.CLEANUP
    assert phases.resolve_advance(MachineView(phase=phase), req(confirm_cleanup=confirm)) is nxt
    assert phases.resolve_advance(MachineView(phase=phase), req(to=nxt, confirm_cleanup=confirm)) is nxt


def test_entering_cleanup_needs_its_own_confirmation_and_drop_asks_again() -> None:
    view = MachineView(phase=P.CUTOVER_WRITES, name="orders")
    assert "point of no return" in rejected(phases.resolve_advance, view, req())
    assert "point of no return" in rejected(phases.resolve_advance, view, req(force=True, reason="x"))
    assert phases.resolve_advance(view, req(confirm_cleanup=True)) is P.CLEANUP
    assert "confirm_drop" in rejected(phases.resolve_advance, view, req(confirm_cleanup=True, drop_old_tables=True))
    assert "confirm_drop" in rejected(phases.resolve_advance, view, req(confirm_cleanup=True, drop_old_tables=True,
                                                                        confirm_drop="other"))
    assert phases.resolve_advance(view, req(confirm_cleanup=True, drop_old_tables=True, confirm_drop="orders")) \
        is P.CLEANUP
    assert "only happens on entering CLEANUP" in rejected(
        phases.resolve_advance, MachineView(phase=P.SHADOW_READ), req(drop_old_tables=True))


def test_hold_blocks_advances_and_auto_mode_but_not_rollbacks() -> None:
    held = MachineView(phase=P.SHADOW_READ, held="by ann: incident 7", auto=True)
    assert "held" in rejected(phases.resolve_advance, held, req())
    assert "held" in rejected(phases.resolve_advance, held, req(force=True, reason="x"))
    assert phases.resolve_rollback(held, req(reason="r")) is P.BACKFILL
    to, why = phases.auto_target(held)
    assert to is None and "held" in why
    assert "needs a reason" in rejected(phases.check_hold, MachineView(phase=P.SHADOW_READ), req())
    assert "already held" in rejected(phases.check_hold, held, req(reason="again"))
    assert "not held" in rejected(phases.check_hold, MachineView(phase=P.SHADOW_READ), req(release=True))
    phases.check_hold(held, req(release=True))


@pytest.mark.parametrize("phase", PHASE_ORDER[:-2])
def test_skipping_a_phase_is_rejected_with_what_it_skips(phase: Phase) -> None:
    to = PHASE_ORDER[phase.rank + 2]
    msg = rejected(phases.resolve_advance, MachineView(phase=phase), req(to=to))
    assert "cannot skip phases" in msg and PHASE_ORDER[phase.rank + 1].value in msg


def test_advance_rejections() -> None:
    assert "DONE" in rejected(phases.resolve_advance, MachineView(phase=P.DONE), req())
    assert "use rollback" in rejected(phases.resolve_advance, MachineView(phase=P.BACKFILL), req(to=P.PREPARE))
    assert "already in" in rejected(phases.resolve_advance, MachineView(phase=P.BACKFILL), req(to=P.BACKFILL))
    assert "paused" in rejected(phases.resolve_advance, MachineView(phase=P.DUAL_WRITE, paused=True), req())
    assert "in progress" in rejected(phases.resolve_advance, MachineView(phase=P.DUAL_WRITE, transitioning="x"),
                                     req())
    msg = rejected(phases.resolve_advance, MachineView(phase=P.BACKFILL, work_done=False, work_state="copying"),
                   req())
    assert "not finished its work" in msg and "copying" in msg
    assert "reason" in rejected(phases.resolve_advance, MachineView(phase=P.SHADOW_READ), req(force=True))


def test_cleanup_only_leads_to_done() -> None:
    assert phases.resolve_advance(MachineView(phase=P.CLEANUP), req()) is P.DONE
    assert "point of no return" in rejected(phases.resolve_rollback, MachineView(phase=P.CLEANUP),
                                            req(reason="x"))
    assert "point of no return" in rejected(phases.resolve_rollback, MachineView(phase=P.DONE), req(reason="x"))


@pytest.mark.parametrize("phase", BEFORE_CLEANUP[1:])
def test_rollback_to_any_earlier_phase_before_cleanup(phase: Phase) -> None:
    assert phases.resolve_rollback(MachineView(phase=phase), req(reason="r")) is phases.previous_phase(phase)
    for to in PHASE_ORDER[: phase.rank]:
        assert phases.resolve_rollback(MachineView(phase=phase), req(to=to, reason="r")) is to
    # rollback is a safety action: allowed while paused
    assert phases.resolve_rollback(MachineView(phase=phase, paused=True), req(reason="r"))


def test_rollback_rejections() -> None:
    assert "first phase" in rejected(phases.resolve_rollback, MachineView(phase=P.PREPARE), req(reason="r"))
    assert "needs a reason" in rejected(phases.resolve_rollback, MachineView(phase=P.BACKFILL), req())
    assert "earlier phase" in rejected(phases.resolve_rollback, MachineView(phase=P.BACKFILL),
                                       req(to=P.SHADOW_READ, reason="r"))
    assert "earlier phase" in rejected(phases.resolve_rollback, MachineView(phase=P.BACKFILL),
                                       req(to=P.BACKFILL, reason="r"))


def test_pause_resume_approve_verify() -> None:
    assert "already paused" in rejected(phases.check_pause, MachineView(phase=P.BACKFILL, paused=True), req())
    assert "not paused" in rejected(phases.check_resume, MachineView(phase=P.BACKFILL), req())
    assert "DONE" in rejected(phases.check_pause, MachineView(phase=P.DONE), req())
    assert "needs no approval" in rejected(phases.resolve_approve, MachineView(phase=P.DUAL_WRITE), req())
    assert phases.resolve_approve(MachineView(phase=P.SHADOW_READ, require_approval=True), req()) is \
        P.CUTOVER_READS
    assert "confirm" in rejected(phases.resolve_approve, MachineView(phase=P.CUTOVER_WRITES, auto=True), req())
    assert phases.resolve_approve(MachineView(phase=P.CUTOVER_WRITES, auto=True), req(confirm_cleanup=True)) is \
        P.CLEANUP
    assert "only the next" in rejected(phases.resolve_approve, MachineView(phase=P.SHADOW_READ,
                                                                           require_approval=True),
                                       req(to=P.CUTOVER_WRITES))
    assert "before DUAL_WRITE" in rejected(phases.check_verify, MachineView(phase=P.PREPARE), req())
    assert "retired" in rejected(phases.check_verify, MachineView(phase=P.CLEANUP), req())
    assert "already running" in rejected(phases.check_verify, MachineView(phase=P.SHADOW_READ, verifying=True),
                                         req())


def test_store_roles_by_phase() -> None:
    assert [phases.authoritative(p) for p in PHASE_ORDER] == ["old"] * 5 + ["new"] * 3
    assert [phases.secondary_is_mirrored(p) for p in PHASE_ORDER] == [False] + [True] * 5 + [False] * 2
    assert [phases.continuous_verification(p) for p in PHASE_ORDER] == [False] + [True] * 5 + [False] * 2
    assert phases.verification_reverse(P.CUTOVER_WRITES) and not phases.verification_reverse(P.CUTOVER_READS)


def test_auto_mode_holds_before_cleanup_unless_told() -> None:
    view = MachineView(phase=P.CUTOVER_WRITES, auto=True)
    to, why = phases.auto_target(view)
    assert to is None and "holds before CLEANUP" in why
    assert phases.auto_target(MachineView(phase=P.CUTOVER_WRITES, auto=True, auto_cleanup=True))[0] is P.CLEANUP
    assert phases.auto_target(MachineView(phase=P.CUTOVER_WRITES, auto=True, approved_for=P.CLEANUP))[0] is \
        P.CLEANUP
    assert phases.auto_target(MachineView(phase=P.BACKFILL, auto=True, work_done=False, work_state="w")) == \
        (None, "w")
    assert phases.auto_target(MachineView(phase=P.BACKFILL, auto=True, paused=True))[0] is None
    assert phases.auto_target(MachineView(phase=P.BACKFILL, auto=True))[0] is P.SHADOW_READ
    held = phases.auto_target(MachineView(phase=P.SHADOW_READ, auto=True, require_approval=True))
    assert held[0] is None and "approval" in held[1]
    assert phases.auto_target(MachineView(phase=P.BACKFILL))[0] is None  # manual


NO_TRAFFIC = {"min_shadow_samples": 0, "min_write_samples": 0, "min_latency_samples": 0}


def _spec(**kw: object) -> MigrationSpec:
    gates = {**NO_TRAFFIC, **kw.pop("gates", {})}  # type: ignore[dict-item]
    return MigrationSpec.model_validate({"name": "m", "old": "a", "new": "b", "tables": [{"source": "t"}],
                                         "gates": gates, **kw})


def _verification(at: datetime, **kw: object) -> VerificationSummary:
    base: dict[str, object] = {"at": at, "ok": True, "rows_compared": 10}
    return VerificationSummary.model_validate({**base, **kw})


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _gate_input(**kw: object) -> GateInput:
    base: dict[str, object] = {"spec": _spec(), "phase": P.SHADOW_READ, "to": P.CUTOVER_READS,
                               "backfill_percent": 100, "backfill_done": True,
                               "last_verification": _verification(NOW - timedelta(seconds=5)),
                               "phase_entered_at": NOW, "at": NOW}
    return GateInput.model_validate({**base, **kw})


def test_gate_passes_on_complete_backfill_and_recent_clean_verification() -> None:
    result = phases.evaluate_gate(_gate_input())
    assert result.passed and all(result.checks.values()) and result.reasons == []
    assert result.evidence["verification"]["rows_compared"] == 10
    verdicts = {m.name: m.verdict.value for m in result.metrics}
    assert verdicts == {"backfill_completion": "pass", "shadow_match_rate": "n/a",
                        "secondary_write_success_rate": "n/a", "p99_latency_impact": "n/a",
                        "reconciliation_gap": "pass", "repair_queue": "pass"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"backfill_percent": 90, "backfill_done": False}, "backfill is 90%"),
    ({"last_verification": None}, "no verification"),
    ({"repair_queue_depth": 3}, "3 keys wait"),
    ({"at": NOW + timedelta(seconds=400)}, "needs one younger than 300s"),
    ({"phase": P.CUTOVER_WRITES, "to": P.CLEANUP}, "needs new->old"),
])
def test_gate_failures_say_why(change: dict[str, object], reason: str) -> None:
    result = phases.evaluate_gate(_gate_input(**change))
    assert not result.passed
    assert any(reason in r for r in result.reasons), result.reasons


def test_gate_without_traffic_is_not_yet_when_samples_are_required() -> None:
    result = phases.evaluate_gate(_gate_input(spec=MigrationSpec.model_validate(
        {"name": "m", "old": "a", "new": "b", "tables": [{"source": "t"}]})))
    assert not result.passed
    assert {m.name: m.verdict.value for m in result.metrics if not m.ok} == {
        "shadow_match_rate": "not-yet", "secondary_write_success_rate": "not-yet", "p99_latency_impact": "not-yet"}
    # CLEANUP does not look at traffic
    cleanup = phases.evaluate_gate(_gate_input(phase=P.CUTOVER_WRITES, to=P.CLEANUP, spec=MigrationSpec.model_validate(
        {"name": "m", "old": "a", "new": "b", "tables": [{"source": "t"}]}),
        last_verification=_verification(NOW, direction="new->old")))
    assert cleanup.passed, cleanup.reasons


def test_gate_rejects_dirty_or_empty_verification_and_requires_approval_when_asked() -> None:
    base = _gate_input()
    assert phases.evaluate_gate(base).passed
    dirty = base.model_copy(update={"last_verification": _verification(NOW, ok=False, missing=2, unresolved=2)})
    assert "2 unresolved" in " ".join(phases.evaluate_gate(dirty).reasons)
    empty = base.model_copy(update={"last_verification": _verification(NOW, rows_compared=0)})
    assert "zero rows" in " ".join(phases.evaluate_gate(empty).reasons)
    strict = base.model_copy(update={"spec": _spec(gates={"require_approval": True})})
    assert not phases.evaluate_gate(strict).passed
    assert phases.evaluate_gate(strict.model_copy(update={"approved": True})).passed
    # ungated transitions always pass
    assert phases.evaluate_gate(base.model_copy(update={"to": P.BACKFILL, "backfill_done": False})).passed


def test_tenant_rules_and_plans() -> None:
    t = {"acme": P.CUTOVER_WRITES}
    view = MachineView(phase=P.SHADOW_READ, tenancy=True, tenants=t)
    assert "no `tenants` section" in rejected(phases.resolve_advance, MachineView(phase=P.SHADOW_READ),
                                              req(tenant="acme"))
    assert "not a tenant id" in rejected(phases.resolve_advance, view, req(tenant="a b"))
    assert "from SHADOW_READ on" in rejected(phases.resolve_advance, MachineView(phase=P.BACKFILL, tenancy=True),
                                             req(tenant="beta"))
    assert phases.resolve_advance(view, req(tenant="beta")) is P.CUTOVER_READS
    assert "migration-wide" in rejected(phases.resolve_advance, view, req(tenant="acme"))
    assert "follows the migration" in rejected(phases.resolve_rollback, view, req(tenant="beta", reason="r"))
    assert "below the migration's phase" in rejected(phases.resolve_rollback, view,
                                                     req(tenant="acme", to=P.BACKFILL, reason="r"))
    # a tenant rollback out of CUTOVER_WRITES verifies that tenant's rows first; back to the migration's
    # phase, the tenant simply follows it again
    plan = phases.plan_rollback(view, req(tenant="acme", to=P.SHADOW_READ, reason="r"))
    assert plan.verify_first == ("acme",) and plan.tenants_after == {} and plan.phase_after is P.SHADOW_READ
    # a migration-wide rollback pulls every tenant back, verifying the ones whose authority flips
    plan = phases.plan_rollback(MachineView(phase=P.CUTOVER_READS, tenancy=True, tenants=t),
                                req(reason="r"))
    assert plan.verify_first == ("acme",) and plan.tenants_after == {} and plan.to is P.SHADOW_READ
    # a migration-wide advance: tenants it catches up with follow it again
    gate = phases.evaluate_gate(_gate_input(phase=P.SHADOW_READ, to=P.CUTOVER_READS))
    plan = phases.plan_advance(MachineView(phase=P.SHADOW_READ, tenancy=True, tenants={"acme": P.CUTOVER_READS,
                                                                                        "beta": P.CUTOVER_WRITES}),
                               req(), gate)
    assert plan.tenants_after == {"beta": P.CUTOVER_WRITES} and plan.gate_passed is True
    assert phases.overrides_for(P.CUTOVER_READS, plan.tenants_after) == {"tenants": {"beta": "CUTOVER_WRITES"}}
    assert phases.overrides_for(P.CUTOVER_WRITES, plan.tenants_after) == {}
