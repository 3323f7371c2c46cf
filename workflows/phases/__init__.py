"""The phase machine's rules, as pure functions: which transitions are legal, what gates them, what each
phase means for the stores, and what a transition changes (per tenant too).

Kept free of Temporal calls so the rules can be unit- and property-tested exhaustively and so the update
*validators* (which must not block or write history) can call them directly. The workflow feeds them a
:class:`MachineView` snapshot of its state, and carries out a transition by applying the :class:`Plan`
that :func:`plan_advance` / :func:`plan_rollback` return. ``tests/support/phase_machine.py`` composes the very
same functions into a synchronous reference model of the workflow, which the property tests drive with
random operator sequences.

Tenants (spec ``tenants``): the migration's own phase is every tenant's phase unless a tenant has moved
on its own. A tenant moves from the migration's phase (at least SHADOW_READ: the backfill and the dual
writes are table-wide) up to CUTOVER_WRITES, one step at a time, with its own gate, approval, hold and
rollback; CLEANUP is migration-wide. When the migration itself catches up with a tenant, the tenant simply
follows it again. A rollback of the migration pulls every tenant back with it.
"""

from __future__ import annotations

from workflows.phases._gate import evaluate_gate
from workflows.phases._meaning import (
    GATED,
    GLOBAL,
    NO_RETURN,
    TENANT_FIRST,
    TENANT_LAST,
    TRAFFIC_GATED,
    TRIGGERED,
    authoritative,
    continuous_verification,
    effective_phase,
    flips_to_old,
    follow,
    next_phase,
    overrides_for,
    previous_phase,
    reads_from,
    secondary_is_mirrored,
    verification_reverse,
)
from workflows.phases._rules import (
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    MachineView,
    Plan,
    Rejected,
    TenantView,
    approval_needed,
    auto_target,
    check_abort,
    check_hold,
    check_pause,
    check_resume,
    check_verify,
    decide_kind,
    parse_request,
    plan_advance,
    plan_rollback,
    resolve_advance,
    resolve_approve,
    resolve_rollback,
    stale_advance,
)

__all__ = [
    "GATED",
    "GLOBAL",
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "MachineView",
    "NO_RETURN",
    "Plan",
    "Rejected",
    "TENANT_FIRST",
    "TENANT_LAST",
    "TRAFFIC_GATED",
    "TRIGGERED",
    "TenantView",
    "approval_needed",
    "authoritative",
    "auto_target",
    "check_abort",
    "check_hold",
    "check_pause",
    "check_resume",
    "check_verify",
    "continuous_verification",
    "decide_kind",
    "effective_phase",
    "evaluate_gate",
    "flips_to_old",
    "follow",
    "next_phase",
    "overrides_for",
    "parse_request",
    "plan_advance",
    "plan_rollback",
    "previous_phase",
    "reads_from",
    "resolve_advance",
    "resolve_approve",
    "resolve_rollback",
    "secondary_is_mirrored",
    "stale_advance",
    "verification_reverse",
]
