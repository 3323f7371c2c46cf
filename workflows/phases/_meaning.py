"""What each phase means for the stores (authority, reads, mirroring, verification direction), the
constants that group phases, and how tenants' own phases combine with the migration's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflows.models import PHASE_ORDER, Phase

GATED: frozenset[Phase] = frozenset({Phase.CUTOVER_READS, Phase.CUTOVER_WRITES, Phase.CLEANUP})
"""Entering these phases needs the gate to pass (or a forced advance with a reason)."""

TRAFFIC_GATED: frozenset[Phase] = frozenset({Phase.CUTOVER_READS, Phase.CUTOVER_WRITES})
"""Entering these also needs the live statistics (shadow match, secondary writes, latency) to pass."""

TRIGGERED: frozenset[Phase] = frozenset({Phase.CUTOVER_READS, Phase.CUTOVER_WRITES})
"""In these phases the automatic rollback triggers watch the statistics."""

NO_RETURN = Phase.CLEANUP
"""Entering CLEANUP retires the old store: from here on there is no rollback."""

TENANT_FIRST = Phase.SHADOW_READ
TENANT_LAST = Phase.CUTOVER_WRITES
"""Tenants move on their own between these phases (inclusive)."""

GLOBAL = ""
"""The key of the migration-wide scope (holds, plans) beside tenant ids."""


def next_phase(phase: Phase) -> Phase | None:
    i = PHASE_ORDER.index(phase)
    return PHASE_ORDER[i + 1] if i + 1 < len(PHASE_ORDER) else None


def previous_phase(phase: Phase) -> Phase | None:
    i = PHASE_ORDER.index(phase)
    return PHASE_ORDER[i - 1] if i > 0 else None


def authoritative(phase: Phase) -> str:
    """Which store holds the truth: 'new' from write cutover on."""
    return "new" if phase.rank >= Phase.CUTOVER_WRITES.rank else "old"


def reads_from(phase: Phase) -> str:
    return "new" if phase.rank >= Phase.CUTOVER_READS.rank else "old"


def secondary_is_mirrored(phase: Phase) -> bool:
    """Do applications mirror writes to the other store in this phase (so repairs make sense)?"""
    return Phase.DUAL_WRITE.rank <= phase.rank <= Phase.CUTOVER_WRITES.rank


def verification_reverse(phase: Phase) -> bool:
    """Verify new -> old once new is authoritative (old is kept in sync for rollback)."""
    return authoritative(phase) == "new"


def continuous_verification(phase: Phase) -> bool:
    """Continuous verification runs from DUAL_WRITE until CLEANUP."""
    return Phase.DUAL_WRITE.rank <= phase.rank < Phase.CLEANUP.rank


def flips_to_old(frm: Phase, to: Phase) -> bool:
    """Does this move make the old store authoritative again (so old must first catch up with new)?"""
    return authoritative(frm) == "new" and authoritative(to) == "old"


# ---------------------------------------------------------------------------------------------------------
# tenants


def effective_phase(phase: Phase, tenants: Mapping[str, Phase], tenant: str | None) -> Phase:
    """The phase a tenant is in: its own when it moved ahead, else the migration's."""
    own = tenants.get(tenant) if tenant is not None else None
    return own if own is not None and own.rank > phase.rank else phase


def follow(phase: Phase, tenants: Mapping[str, Phase]) -> dict[str, Phase]:
    """Tenants that are still ahead of the migration's phase keep their own; the others follow it."""
    return {t: p for t, p in tenants.items() if p.rank > phase.rank}


def overrides_for(phase: Phase, tenants: Mapping[str, Phase]) -> dict[str, Any]:
    """What applications read in ``overrides`` (see dualwrite.adapter.phase): each tenant's own phase."""
    own = follow(phase, tenants)
    return {"tenants": {t: p.value for t, p in sorted(own.items())}} if own else {}
