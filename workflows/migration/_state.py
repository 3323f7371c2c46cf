"""The one state every collaborator of the migration workflow shares.

``s`` (the :class:`MigrationCarry`) is what survives continue-as-new; the rest lives for one run: the lock
transitions take, the running tasks, the wake-up counter the main loop waits on, the fence in force. The
collaborators (transitions, fence, gates, phase work, ...) are plain objects that read and change it from
workflow code, so the workflow stays one deterministic coroutine tree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

from workflows.migration._constants import MAX_TRANSITIONS_KEPT

with workflow.unsafe.imports_passed_through():
    from dualwrite.capture import CaptureMethod, method_for
    from dualwrite.spec import MigrationSpec
    from workflows import phases
    from workflows.models import (
        GateResult,
        MigrationCarry,
        MigrationInput,
        Phase,
        SpecRef,
        TableProgress,
        TenantState,
        TransitionRecord,
        TransitionResult,
        Tuning,
    )

__all__ = ["MigrationState", "cancel_task", "reject", "scope_key", "who"]


class MigrationState:
    """The migration's state and the questions every collaborator asks of it."""

    def __init__(self, inp: MigrationInput) -> None:
        self.spec: MigrationSpec = inp.spec
        self.spec_ref: SpecRef | None = None
        """The reference activity inputs carry instead of the spec (computed once per run when first needed)."""
        self.method: CaptureMethod = method_for(inp.spec.strategy)
        """How changes reach the other store: the facts the workflow acts on (never the strategy's name)."""
        self.tuning: Tuning = inp.tuning
        self.s: MigrationCarry = inp.carry.model_copy(deep=True) if inp.carry else MigrationCarry(
            started_by=inp.started_by,
            tables=[TableProgress(source=t.source, target=t.target_table) for t in inp.spec.tables])
        self.lock = asyncio.Lock()
        self.transitioning = ""
        self.work: asyncio.Task[None] | None = None
        """The migration's phase entry work."""
        self.verify: asyncio.Task[None] | None = None
        """A continuous or requested verification."""
        self.tenant_work: dict[str, asyncio.Task[None]] = {}
        self.drain: asyncio.Task[None] | None = None
        """The background repair drain."""
        self.monitor: asyncio.Task[None] | None = None
        """The rollback-trigger monitor."""
        self.stopping = False
        """The background tasks (repair drain, trigger monitor) are to stop."""
        self.fatal: BaseException | None = None
        self.wake = 0
        """Grows whenever something the main loop may act on changed; the loop waits for it to move."""
        self.gate_dirty = True
        self.gate_checked_at: Any = None
        self.last_signal_rejection = ""
        self.dropped: list[str] = []
        self.aborting = False
        self.backfill_children: list[str] = []
        self.progress_in_loop = False
        self.progress_upserts = True
        self.progress_dirty = False
        """Backfill progress signals upsert BackfillPercent from the main loop (histories from before: from the
        signal handler)."""
        self.fence: tuple[bool, tuple[str, ...]] | None = None
        """A write fence in force: (the whole migration, the tenants fenced). Only set inside a transition
        handler (under the lock), so it never needs to survive continue-as-new."""

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the counters the status shows (a zero adds no key)."""
        if n:
            self.s.counters[name] = self.s.counters.get(name, 0) + n

    def tenant_phases(self) -> dict[str, Phase]:
        """The phase of every tenant with an entry of its own."""
        return {t.tenant: t.phase for t in self.s.tenants}

    def tenant(self, tenant: str | None) -> TenantState | None:
        """A tenant's own entry; None for the migration and for a tenant that follows it without one."""
        if tenant is None:
            return None
        return next((t for t in self.s.tenants if t.tenant == tenant), None)

    def own(self, ts: TenantState | None) -> bool:
        """A tenant moved on its own when it is ahead (an entry may only hold an approval)."""
        return ts is not None and ts.phase.rank > self.s.phase.rank

    def hold_text(self, tenant: str | None) -> str:
        """Who holds the scope and why, as the rules and the details show it ('' when not held)."""
        h = self.s.holds.get(scope_key(tenant))
        return "" if h is None else f"by {h.by or '?'}: {h.reason}"

    def phase_of(self, tenant: str | None) -> Phase:
        """The phase a scope acts on: the tenant's own when it moved ahead, else the migration's."""
        return phases.effective_phase(self.s.phase, self.tenant_phases(), tenant)

    def view(self, tenant: str | None = None, *, planning: bool = False) -> phases.MachineView:
        """The rules' snapshot; ``planning``: from inside the transition being carried out."""
        s = self.s
        tv = None
        if tenant is not None:
            ts = self.tenant(tenant)
            tv = phases.TenantView(tenant=tenant, phase=self.phase_of(tenant), own=self.own(ts),
                                   work_done=ts.work_done if ts else True, work_state=ts.work_state if ts else "",
                                   held=self.hold_text(tenant), approved_for=ts.approved_for if ts else None)
        return phases.MachineView(
            phase=s.phase, paused=s.paused, auto=self.spec.mode.value == "auto",
            auto_cleanup=self.spec.auto_cleanup, require_approval=self.spec.gates.require_approval,
            transitioning="" if planning else self.transitioning, work_done=s.phase_work_done,
            work_state=s.work_state, verifying=self.verify is not None and not self.verify.done(),
            approved_for=s.approved_for, held=self.hold_text(None), name=self.spec.name,
            tenancy=self.spec.tenants is not None, tenants=phases.follow(s.phase, self.tenant_phases()),
            tenant=tv)

    def note_for(self, tenant: str | None) -> Callable[[str], None]:
        """A writer of the work state shown for ``tenant`` (the migration's when None) that wakes the loop; a
        tenant without an entry of its own has nowhere to show it."""
        ts = self.tenant(tenant)

        def note(text: str) -> None:
            if tenant is None:
                self.s.work_state = text
            elif ts is not None:
                ts.work_state = text
            self.wake += 1

        return note

    def idle(self) -> bool:
        """Nothing runs that continue-as-new or a scheduled verification would have to wait for."""
        return (not self.transitioning and not self.lock.locked()
                and (self.work is None or self.work.done())
                and (self.verify is None or self.verify.done())
                and all(t.done() for t in self.tenant_work.values()))

    def verification_allowed(self) -> bool:
        """Continuous verification runs in this phase (DUAL_WRITE until CLEANUP)."""
        return phases.continuous_verification(self.s.phase)

    def record(self, frm: Phase, to: Phase, kind: str, by: str, reason: str, *, tenant: str | None = None,
               gate_passed: bool | None = None) -> None:
        """Keep a transition (or a pause, hold, approval...) in the status, newest last, and log it."""
        s = self.s
        s.transitions.append(TransitionRecord(from_phase=frm, to_phase=to, at=workflow.now(), by=by,
                                              reason=reason, kind=kind, tenant=tenant, gate_passed=gate_passed))
        del s.transitions[:-MAX_TRANSITIONS_KEPT]
        workflow.logger.info("migration %s: %s%s %s -> %s by %s: %s", self.spec.name, who(tenant), kind, frm, to,
                             by or "?", reason)

    def result(self, ok: bool, message: str, *, tenant: str | None = None, gate: GateResult | None = None,
               would: list[str] | None = None) -> TransitionResult:
        """The answer to an operator request, with the scope's phase and the epoch as they are now."""
        return TransitionResult(ok=ok, phase=self.phase_of(tenant), epoch=self.s.epoch, message=message,
                                tenant=tenant, gate=gate, would=would or [])

    def short_heartbeat(self) -> timedelta:
        """For activities that heartbeat from a background thread while they work (preflight, publish,
        gate, retire): a killed worker costs this long, not the start-to-close timeout."""
        return timedelta(seconds=min(30.0, self.tuning.heartbeat_timeout_seconds))


def reject(reason: str) -> ApplicationError:
    """An operator request the rules refuse: the update fails with the reason, the workflow does not."""
    return ApplicationError(reason, type="IllegalTransition", non_retryable=True)


def scope_key(tenant: str | None) -> str:
    """The key of a scope in ``holds``: the tenant, or the migration's own key."""
    return phases.GLOBAL if tenant is None else tenant


def who(tenant: str | None) -> str:
    """How a message names the scope it is about (nothing for the whole migration)."""
    return "" if tenant is None else f"tenant {tenant}: "


async def cancel_task(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait until its activity / child has been told."""
    if task.done():
        return
    task.cancel()
    try:
        await task
    except BaseException as exc:  # noqa: BLE001 - whatever it ended with, the caller goes on
        if not is_cancelled_exception(exc):
            workflow.logger.warning("background task ended with %s while cancelled", type(exc).__name__)
