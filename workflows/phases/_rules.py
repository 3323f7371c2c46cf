"""The rules a transition is decided by: the view of the state they read, operator input parsed from
whatever arrives, which requests are legal (with the reason when not), auto mode's next step, and the
:class:`Plan` of what a legal transition changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from dualwrite.spec import TENANT_ID_RE
from workflows.models import PHASE_ORDER, GateResult, Phase, TransitionRequest
from workflows.phases._meaning import (
    GATED,
    TENANT_FIRST,
    TENANT_LAST,
    effective_phase,
    flips_to_old,
    follow,
    next_phase,
    previous_phase,
)


@dataclass(frozen=True)
class TenantView:
    """One tenant, as the rules need it."""

    tenant: str
    phase: Phase
    """Its effective phase."""
    own: bool = False
    """It moved on its own (is ahead of the migration)."""
    work_done: bool = True
    work_state: str = ""
    held: str = ""
    approved_for: Phase | None = None


@dataclass(frozen=True)
class MachineView:
    """A snapshot of the workflow's state, as the rules need it (``tenant``: the one a request names)."""

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
    held: str = ""
    """Non-empty while forward transitions of the migration are held (who and why)."""
    name: str = ""
    tenancy: bool = False
    """The spec has a ``tenants`` section."""
    tenants: Mapping[str, Phase] = field(default_factory=dict)
    """Tenants with their own phase."""
    tenant: TenantView | None = None


class Rejected(Exception):  # noqa: N818 - a decision, not a crash
    """A transition the rules forbid; ``str()`` is the reason shown to the operator."""


# ---------------------------------------------------------------------------------------------------------
# operator input: whatever arrives (the CLI, the Web UI's forms, `temporal workflow signal`, a script)


MAX_REASON_CHARS = 2000
"""A reason is shown in status and kept in every transition record (and in the continue-as-new carry)."""
MAX_NAME_CHARS = 200
"""``by``, ``tenant`` and ``confirm_drop`` are names."""

_REQUEST_EXAMPLE = '{"reason": "why", "by": "you"} (fields: ' + ", ".join(TransitionRequest.model_fields) + ")"


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def parse_request(args: tuple[Any, ...] | list[Any]) -> TransitionRequest:
    """The one operator request a handler was sent, validated; :class:`Rejected` with a short reason for
    anything else: no input, JSON null, several values, a value that is not an object, unknown or
    wrong-typed fields, text longer than a reason or a name should be. The reason never echoes the input
    back whole (it may be a megabyte)."""
    if len(args) != 1:
        got = "no input" if not args else f"{len(args)} values"
        raise Rejected(f"expected one JSON object like {_REQUEST_EXAMPLE}, got {got}")
    raw = args[0]
    if isinstance(raw, TransitionRequest):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        raise Rejected(f"expected one JSON object like {_REQUEST_EXAMPLE}, got {_kind_of(raw)}")
    unknown = sorted(str(k)[:40] for k in raw if k not in TransitionRequest.model_fields)
    if unknown:
        raise Rejected(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:5])}: expected "
                       f"{', '.join(TransitionRequest.model_fields)}")
    for key, limit in (("reason", MAX_REASON_CHARS), ("by", MAX_NAME_CHARS), ("tenant", MAX_NAME_CHARS),
                       ("confirm_drop", MAX_NAME_CHARS)):
        value = raw.get(key)
        if isinstance(value, str) and len(value) > limit:
            raise Rejected(f"{key} is {len(value)} characters long: at most {limit} are kept")
    try:
        return TransitionRequest.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(x) for x in e['loc']) or 'input'}: {e['msg']}"
                    + (f" (got {_short(e.get('input'))})" if "input" in e else "") for e in exc.errors()[:5]]
        raise Rejected("invalid request: " + "; ".join(problems)) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def stale_advance(view: MachineView, req: TransitionRequest) -> str:
    """An advance that names the phase it leaves (``from_phase``) when the migration (or the tenant) is no
    longer in it: what to tell the caller, for a no-op success. '' when the advance is current."""
    if req.from_phase is None:
        return ""
    current = effective_phase(view.phase, view.tenants, req.tenant) if req.tenant is not None else view.phase
    if current is req.from_phase:
        return ""
    who = f"tenant {req.tenant}" if req.tenant is not None else "the migration"
    return (f"nothing done: this advance was to leave {req.from_phase}, and {who} is in {current} now "
            "(a repeated or concurrent advance already moved it, or it was rolled back); check status and "
            "advance again if you mean to leave " + str(current))


def check_abort(view: MachineView, req: TransitionRequest) -> None:
    """Abort: from any phase before CLEANUP, with a reason; the migration-wide command takes no tenant."""
    if req.tenant is not None:
        raise Rejected("abort ends the whole migration: it takes no tenant (use rollback --tenant for one)")
    if view.phase in (Phase.CLEANUP, Phase.DONE):
        raise Rejected(f"cannot abort in {view.phase}: entering CLEANUP retired the old store (the point of no "
                       "return); let the migration finish")
    if not req.reason.strip():
        raise Rejected("an abort needs a reason (it is recorded)")


def _tenant(view: MachineView, req: TransitionRequest) -> TenantView:
    if not view.tenancy:
        raise Rejected("this migration moves all tenants together: its spec has no `tenants` section")
    if not TENANT_ID_RE.match(req.tenant or ""):
        raise Rejected(f"{req.tenant!r} is not a tenant id (letters, digits, '_', '-', '.', ':', '@')")
    if view.tenant is None or view.tenant.tenant != req.tenant:
        return TenantView(tenant=req.tenant or "", phase=effective_phase(view.phase, view.tenants, req.tenant),
                          own=req.tenant in view.tenants)
    return view.tenant


def _cleanup_confirmation(view: MachineView, req: TransitionRequest, to: Phase) -> None:
    if req.drop_old_tables and to is not Phase.CLEANUP:
        raise Rejected("dropping the old tables only happens on entering CLEANUP")
    if to is not Phase.CLEANUP:
        return
    if not req.confirm_cleanup:
        raise Rejected("entering CLEANUP is the point of no return (mirroring stops, capture is removed and "
                       "the old tables are retired; no rollback after it): confirm it "
                       "(`dualwrite advance NAME --to CLEANUP --confirm-cleanup`)")
    if req.drop_old_tables and req.confirm_drop != view.name:
        raise Rejected("dropping the old tables (instead of renaming them) needs confirm_drop set to the "
                       f"migration's name {view.name!r}")


def resolve_advance(view: MachineView, req: TransitionRequest) -> Phase:
    """The phase an advance goes to, or :class:`Rejected` with the reason."""
    if req.tenant is not None:
        return _resolve_tenant_advance(view, req)
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
    if view.held:
        raise Rejected(f"the migration is held in {view.phase} ({view.held}); release the hold "
                       "(`dualwrite hold NAME --release`) before advancing")
    if view.transitioning:
        raise Rejected(f"a transition is already in progress ({view.transitioning}); try again when it is done")
    if not view.work_done:
        raise Rejected(f"{view.phase} has not finished its work yet ({view.work_state or 'running'}); "
                       "wait for it (see status) before advancing")
    if req.force and not req.reason.strip():
        raise Rejected("a forced advance needs a reason")
    _override_needs_reason(req)
    _cleanup_confirmation(view, req, to)
    return to


def _resolve_tenant_advance(view: MachineView, req: TransitionRequest) -> Phase:
    tv = _tenant(view, req)
    who = f"tenant {tv.tenant}"
    if view.phase.rank < TENANT_FIRST.rank or (view.phase is TENANT_FIRST and not view.work_done):
        raise Rejected(f"tenants move on their own from {TENANT_FIRST} on, once the backfill is verified; the "
                       f"migration is in {view.phase}" + ("" if view.work_done else " (its work is running)"))
    if view.phase.rank > TENANT_LAST.rank:
        raise Rejected(f"the migration is in {view.phase}: tenants no longer move on their own")
    nxt = next_phase(tv.phase)
    assert nxt is not None
    to = req.to or nxt
    if to is tv.phase:
        raise Rejected(f"{who} is already in {to}")
    if to.rank < tv.phase.rank:
        raise Rejected(f"{to} is before {tv.phase}: use rollback --tenant {tv.tenant} to go back")
    if to.rank > TENANT_LAST.rank:
        raise Rejected(f"{who} is in {tv.phase}: {to} is migration-wide, advance the migration itself")
    if to is not nxt:
        raise Rejected(f"cannot skip phases: {who} is in {tv.phase}, the next is {nxt}")
    if view.paused:
        raise Rejected(f"the migration is paused: resume it before advancing {who}")
    if view.held or tv.held:
        raise Rejected(f"{who} is held ({tv.held or view.held}); release the hold before advancing")
    if view.transitioning:
        raise Rejected(f"a transition is already in progress ({view.transitioning}); try again when it is done")
    if not tv.work_done:
        raise Rejected(f"{who} has not finished its work yet ({tv.work_state or 'running'})")
    if req.force and not req.reason.strip():
        raise Rejected("a forced advance needs a reason")
    _override_needs_reason(req)
    if req.drop_old_tables or req.confirm_cleanup:
        raise Rejected("CLEANUP is migration-wide: it takes no tenant")
    return to


def _override_needs_reason(req: TransitionRequest) -> None:
    if req.override_stuck_repairs and not req.reason.strip():
        raise Rejected("overriding stuck repairs needs a reason: the writes it gives up are recorded with it")


def resolve_rollback(view: MachineView, req: TransitionRequest) -> Phase:
    """The phase a rollback goes to, or :class:`Rejected` with the reason."""
    _override_needs_reason(req)
    if view.phase in (Phase.CLEANUP, Phase.DONE):
        raise Rejected(f"cannot roll back from {view.phase}: entering CLEANUP retired the old store "
                       "(the point of no return)")
    if req.tenant is not None:
        return _resolve_tenant_rollback(view, req)
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


def _resolve_tenant_rollback(view: MachineView, req: TransitionRequest) -> Phase:
    tv = _tenant(view, req)
    who = f"tenant {tv.tenant}"
    if not tv.own:
        raise Rejected(f"{who} follows the migration's phase ({view.phase}): roll back the migration instead")
    prev = previous_phase(tv.phase)
    assert prev is not None
    to = req.to or prev
    if to.rank >= tv.phase.rank:
        raise Rejected(f"a rollback goes to an earlier phase: {to} is not before {tv.phase} ({who})")
    if to.rank < view.phase.rank:
        raise Rejected(f"{who} cannot go below the migration's phase {view.phase}: roll back the migration")
    if not req.reason.strip():
        raise Rejected("a rollback needs a reason")
    if view.transitioning:
        raise Rejected(f"a transition is already in progress ({view.transitioning}); try again when it is done")
    return to


def check_pause(view: MachineView, req: TransitionRequest) -> None:
    if req.tenant is not None:
        raise Rejected("pause applies to the whole migration (use hold --tenant to stop one tenant)")
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to pause")
    if view.paused:
        raise Rejected(f"the migration is already paused in {view.phase}")


def check_resume(view: MachineView, req: TransitionRequest) -> None:
    if req.tenant is not None:
        raise Rejected("resume applies to the whole migration (use hold --release --tenant for one tenant)")
    if not view.paused:
        if view.held:  # e.g. auto mode holding after a manual rollback: `resume` is the word that comes to mind
            raise Rejected(f"the migration is not paused (phase {view.phase}) but held ({view.held}); release the "
                           "hold with `dualwrite hold NAME --release`")
        raise Rejected(f"the migration is not paused (phase {view.phase})")


def check_hold(view: MachineView, req: TransitionRequest) -> None:
    """Place (or release) a hold: forward transitions stop, phase work and rollbacks go on."""
    held = view.held
    what = "the migration"
    if req.tenant is not None:
        tv = _tenant(view, req)
        held, what = tv.held, f"tenant {tv.tenant}"
    if req.release:
        if not held:
            raise Rejected(f"{what} is not held")
        return
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to hold")
    if held:
        raise Rejected(f"{what} is already held ({held})")
    if not req.reason.strip():
        raise Rejected("a hold needs a reason (it is shown to whoever wants to advance)")


def resolve_approve(view: MachineView, req: TransitionRequest) -> Phase:
    """What an approval approves: the next gated transition (or the auto-mode hold before CLEANUP)."""
    if req.tenant is not None:
        tv = _tenant(view, req)
        nxt_t = next_phase(tv.phase)
        if nxt_t is None or nxt_t.rank > TENANT_LAST.rank or nxt_t not in GATED or not view.require_approval:
            raise Rejected(f"tenant {tv.tenant} needs no approval to leave {tv.phase}")
        if req.to is not None and req.to is not nxt_t:
            raise Rejected(f"only the next transition can be approved ({tv.phase} -> {nxt_t}), not {req.to}")
        return nxt_t
    if view.phase is Phase.DONE:
        raise Rejected("the migration is DONE: there is nothing to approve")
    nxt = next_phase(view.phase)
    assert nxt is not None
    to = req.to or nxt
    if to is not nxt:
        raise Rejected(f"only the next transition can be approved ({view.phase} -> {nxt}), not {to}")
    if not approval_needed(view, to):
        raise Rejected(f"{view.phase} -> {to} needs no approval"
                       + ("" if view.auto else " (manual mode: advance it yourself)"))
    if view.auto:
        _cleanup_confirmation(view, req, to)
    return to


def check_verify(view: MachineView, req: TransitionRequest) -> None:
    if req.tenant is not None:
        _tenant(view, req)
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
    if view.held:
        return None, f"operator: held ({view.held}); release the hold to continue"
    nxt = next_phase(view.phase)
    assert nxt is not None
    if nxt is Phase.CLEANUP and not view.auto_cleanup and view.approved_for is not Phase.CLEANUP:
        return None, ("operator: auto mode holds before CLEANUP (the point of no return); "
                      "advance or approve it with --confirm-cleanup")
    if approval_needed(view, nxt) and view.approved_for is not nxt and nxt is not Phase.CLEANUP:
        return None, f"operator: approval to enter {nxt}"
    return nxt, ""


# ---------------------------------------------------------------------------------------------------------
# what a transition changes


@dataclass(frozen=True)
class Plan:
    """A transition decided, ready to carry out."""

    tenant: str | None
    frm: Phase
    to: Phase
    kind: str
    phase_after: Phase
    """The migration's phase afterwards."""
    tenants_after: dict[str, Phase]
    """Tenants with their own phase afterwards."""
    verify_first: tuple[str | None, ...] = ()
    """Rollback: reverse verifications (with repair) that must be clean before authority flips back to the
    old store: None for the whole migration, else one tenant's rows."""
    gate_passed: bool | None = None


def decide_kind(gate: GateResult | None, req: TransitionRequest, kind: str) -> str:
    """After the gate: 'force' when forced past a failing gate, ``kind`` otherwise; Rejected without force."""
    if gate is None or gate.passed:
        return kind
    if not req.force:
        raise Rejected(f"the gate into {gate.to} did not pass: " + "; ".join(gate.reasons))
    return "force"


def plan_advance(view: MachineView, req: TransitionRequest, gate: GateResult | None, kind: str = "advance") -> Plan:
    """Decide an advance (the gate, when the target is gated, has been evaluated by the caller)."""
    to = resolve_advance(view, req)
    if to in GATED and gate is None:
        raise Rejected(f"entering {to} needs its gate evaluated")
    kind = decide_kind(gate, req, kind)
    passed = None if gate is None else gate.passed
    if req.tenant is not None:
        frm = effective_phase(view.phase, view.tenants, req.tenant)
        return Plan(tenant=req.tenant, frm=frm, to=to, kind=kind, phase_after=view.phase,
                    tenants_after={**view.tenants, req.tenant: to}, gate_passed=passed)
    return Plan(tenant=None, frm=view.phase, to=to, kind=kind, phase_after=to,
                tenants_after=follow(to, view.tenants), gate_passed=passed)


def plan_rollback(view: MachineView, req: TransitionRequest, kind: str = "rollback") -> Plan:
    """Decide a rollback and which reverse verifications must come first."""
    to = resolve_rollback(view, req)
    if req.tenant is not None:
        frm = effective_phase(view.phase, view.tenants, req.tenant)
        after = dict(view.tenants)
        if to.rank <= view.phase.rank:
            after.pop(req.tenant, None)
        else:
            after[req.tenant] = to
        first: tuple[str | None, ...] = (req.tenant,) if flips_to_old(frm, to) else ()
        return Plan(tenant=req.tenant, frm=frm, to=to, kind=kind, phase_after=view.phase, tenants_after=after,
                    verify_first=first)
    if flips_to_old(view.phase, to):
        first = (None,)
    else:
        first = tuple(t for t, p in sorted(view.tenants.items()) if flips_to_old(p, to))
    return Plan(tenant=None, frm=view.phase, to=to, kind=kind, phase_after=to, tenants_after={},
                verify_first=first)
