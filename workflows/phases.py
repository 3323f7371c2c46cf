"""The phase machine's rules, as pure functions: which transitions are legal, what gates them, and what
each phase means for the stores.

Kept free of Temporal calls so the rules can be unit-tested exhaustively and so the update *validators*
(which must not block or write history) can call them directly. The workflow feeds them a
:class:`MachineView` snapshot of its state.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflows.models import (
    PHASE_ORDER,
    GateInput,
    GateResult,
    Phase,
    TransitionRequest,
)

GATED: frozenset[Phase] = frozenset({Phase.CUTOVER_READS, Phase.CUTOVER_WRITES, Phase.CLEANUP})
"""Entering these phases needs the gate to pass (or a forced advance with a reason)."""

NO_RETURN = Phase.CLEANUP
"""Entering CLEANUP retires the old store: from here on there is no rollback."""


def next_phase(phase: Phase) -> Phase | None:
    i = PHASE_ORDER.index(phase)
    return PHASE_ORDER[i + 1] if i + 1 < len(PHASE_ORDER) else None


def previous_phase(phase: Phase) -> Phase | None:
    i = PHASE_ORDER.index(phase)
    return PHASE_ORDER[i - 1] if i > 0 else None


def authoritative(phase: Phase) -> str:
    """Which store holds the truth: 'new' from write cutover on."""
    return "new" if phase.rank >= Phase.CUTOVER_WRITES.rank else "old"


def secondary_is_mirrored(phase: Phase) -> bool:
    """Do applications mirror writes to the other store in this phase (so repairs make sense)?"""
    return Phase.DUAL_WRITE.rank <= phase.rank <= Phase.CUTOVER_WRITES.rank


def verification_reverse(phase: Phase) -> bool:
    """Verify new -> old once new is authoritative (old is kept in sync for rollback)."""
    return authoritative(phase) == "new"


def continuous_verification(phase: Phase) -> bool:
    """Continuous verification runs from DUAL_WRITE until CLEANUP."""
    return Phase.DUAL_WRITE.rank <= phase.rank < Phase.CLEANUP.rank


@dataclass(frozen=True)
class MachineView:
    """A snapshot of the workflow's state, as the rules need it."""

    phase: Phase
    paused: bool = False
    auto: bool = False
    auto_cleanup: bool = False
    require_approval: bool = False
    transitioning: str = ""
    """Non-empty while a transition is being carried out (what it is)."""
    work_done: bool = True
    """The current phase's entry work (barrier, backfill, verification) has finished."""
    work_state: str = ""
    """What the current phase is still doing, for messages."""
    verifying: bool = False
    approved_for: Phase | None = None


class Rejected(Exception):  # noqa: N818 - a decision, not a crash
    """A transition the rules forbid; ``str()`` is the reason shown to the operator."""


def resolve_advance(view: MachineView, req: TransitionRequest) -> Phase:
    """The phase an advance goes to, or :class:`Rejected` with the reason."""
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to advance to")
    nxt = next_phase(view.phase)
    assert nxt is not None
    to = req.to or nxt
    if to is view.phase:
        raise Rejected(f"the migration is already in {to}")
    if to.rank < view.phase.rank:
        raise Rejected(f"{to} is before {view.phase}: use rollback to go back")
    if to is not nxt:
        skipped = ", ".join(p.value for p in PHASE_ORDER[view.phase.rank + 1:to.rank])
        raise Rejected(f"cannot skip phases: {view.phase} -> {to} would skip {skipped}; "
                       f"advance one phase at a time (next is {nxt})")
    if view.paused:
        raise Rejected(f"the migration is paused in {view.phase}: resume it before advancing")
    if view.transitioning:
        raise Rejected(f"a transition is already in progress ({view.transitioning}); try again when it is done")
    if not view.work_done:
        raise Rejected(f"{view.phase} has not finished its work yet ({view.work_state or 'running'}); "
                       "wait for it (see status) before advancing")
    if req.force and not req.reason.strip():
        raise Rejected("a forced advance needs a reason")
    return to


def resolve_rollback(view: MachineView, req: TransitionRequest) -> Phase:
    """The phase a rollback goes to, or :class:`Rejected` with the reason."""
    if view.phase in (Phase.CLEANUP, Phase.DONE):
        raise Rejected(f"cannot roll back from {view.phase}: entering CLEANUP retired the old store "
                       "(the point of no return)")
    prev = previous_phase(view.phase)
    if prev is None:
        raise Rejected("nothing to roll back to: PREPARE is the first phase")
    to = req.to or prev
    if to.rank >= view.phase.rank:
        raise Rejected(f"a rollback goes to an earlier phase: {to} is not before {view.phase}")
    if not req.reason.strip():
        raise Rejected("a rollback needs a reason")
    if view.transitioning:
        raise Rejected(f"a transition is already in progress ({view.transitioning}); try again when it is done")
    return to


def check_pause(view: MachineView, req: TransitionRequest) -> None:
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to pause")
    if view.paused:
        raise Rejected(f"the migration is already paused in {view.phase}")


def check_resume(view: MachineView, req: TransitionRequest) -> None:
    if not view.paused:
        raise Rejected(f"the migration is not paused (phase {view.phase})")


def resolve_approve(view: MachineView, req: TransitionRequest) -> Phase:
    """What an approval approves: the next gated transition (or the auto-mode hold before CLEANUP)."""
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to approve")
    nxt = next_phase(view.phase)
    assert nxt is not None
    to = req.to or nxt
    if to is not nxt:
        raise Rejected(f"only the next transition can be approved ({view.phase} -> {nxt}), not {to}")
    needs = (to in GATED and view.require_approval) or (view.auto and to is Phase.CLEANUP)
    if not needs:
        raise Rejected(f"{view.phase} -> {to} needs no approval"
                       + ("" if view.auto else " (manual mode: advance it yourself)"))
    return to


def check_verify(view: MachineView, req: TransitionRequest) -> None:
    if view.phase is Phase.PREPARE:
        raise Rejected("nothing to verify before DUAL_WRITE: the new store is not written yet")
    if view.phase in (Phase.CLEANUP, Phase.DONE):
        raise Rejected(f"nothing to verify in {view.phase}: the old store is retired")
    if view.verifying:
        raise Rejected("a verification is already running; see status for its result")


def approval_needed(view: MachineView, to: Phase) -> bool:
    return (to in GATED and view.require_approval) or (view.auto and to is Phase.CLEANUP)


def auto_target(view: MachineView) -> tuple[Phase | None, str]:
    """In auto mode: the phase to advance to now, or None and what the migration waits for."""
    if not view.auto:
        return None, "operator: manual mode, advance when ready"
    if view.phase is Phase.DONE:
        return None, ""
    if view.paused:
        return None, "operator: paused, resume to continue"
    if view.transitioning:
        return None, view.transitioning
    if not view.work_done:
        return None, view.work_state or f"{view.phase} work"
    nxt = next_phase(view.phase)
    assert nxt is not None
    if nxt is Phase.CLEANUP and not view.auto_cleanup and view.approved_for is not Phase.CLEANUP:
        return None, ("operator: auto mode holds before CLEANUP (the point of no return); "
                      "advance or approve it")
    if approval_needed(view, nxt) and view.approved_for is not nxt and nxt is not Phase.CLEANUP:
        return None, f"operator: approval to enter {nxt}"
    return nxt, ""


def evaluate_gate(inp: GateInput) -> GateResult:
    """Decide a gated transition from the evidence at hand (counts only, recorded in history).

    For now: backfill 100 %, the last verification clean with rows compared, recent (after the current
    phase was entered), no pending repairs, and an approval when the spec asks for one. The shadow-read
    and write-outcome thresholds of DESIGN.md plug in here later.
    """
    if inp.to not in GATED:
        return GateResult(passed=True, to=inp.to, checks={}, evidence={"gated": False})
    v = inp.last_verification
    checks: dict[str, bool] = {
        "backfill_complete": inp.backfill_done and inp.backfill_percent >= 100,
        "verification_clean": v is not None and v.ok,
        "verification_compared_rows": v is not None and v.rows_compared > 0,
        "verification_recent": v is not None and (inp.phase_entered_at is None or v.at >= inp.phase_entered_at),
        "repair_queue_empty": inp.repair_queue_depth == 0,
    }
    if inp.spec.gates.require_approval:
        checks["approved"] = inp.approved
    reasons: list[str] = []
    if not checks["backfill_complete"]:
        reasons.append(f"backfill is {inp.backfill_percent}% done, needs 100%")
    if v is None:
        reasons.append("no verification has run yet")
    else:
        if not checks["verification_clean"]:
            reasons.append(f"the last verification found differences (missing {v.missing}, extra {v.extra}, "
                           f"field-different {v.field_different})")
        if not checks["verification_compared_rows"]:
            reasons.append("the last verification compared zero rows")
        if not checks["verification_recent"]:
            reasons.append(f"the last verification predates entering {inp.phase}; verify again")
    if not checks["repair_queue_empty"]:
        reasons.append(f"{inp.repair_queue_depth} keys wait in the repair queue")
    if not checks.get("approved", True):
        reasons.append(f"the spec requires an approval to enter {inp.to}")
    evidence: dict[str, object] = {
        "backfill_percent": inp.backfill_percent,
        "repair_queue_depth": inp.repair_queue_depth,
        "thresholds": {"backfill_percent": 100, "repair_queue_depth": 0, "verification_differences": 0},
    }
    if v is not None:
        evidence["verification"] = {"at": v.at.isoformat(), "ok": v.ok, "rows_compared": v.rows_compared,
                                    "missing": v.missing, "extra": v.extra,
                                    "field_different": v.field_different, "direction": v.direction}
    return GateResult(passed=all(checks.values()), to=inp.to, checks=checks, evidence=evidence,
                      reasons=reasons)
