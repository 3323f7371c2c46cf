"""Phase changes: advance and rollback (gate, fence, enter), and the automatic advance of auto mode."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import ROLLBACK_HOLDS_AUTO_PATCH, ROLLBACK_KINDS
from workflows.migration._fence import WriteFence
from workflows.migration._gates import Gates
from workflows.migration._repairs import RepairDrain
from workflows.migration._state import MigrationState, who
from workflows.migration._verification import Verifications
from workflows.migration._work import PhaseWork

with workflow.unsafe.imports_passed_through():
    from dualwrite.retired import retired_name
    from workflows import phases
    from workflows.models import (
        BACKFILL_PERCENT,
        MIGRATION_PHASE,
        GateResult,
        HoldState,
        Phase,
        TenantState,
        TransitionRequest,
        TransitionResult,
        VerificationSummary,
    )
    from workflows.verify import failure_message


class Transitions:
    """Carries out advances and rollbacks under the lock."""

    def __init__(self, st: MigrationState, capture: Capture, repairs: RepairDrain, fencing: WriteFence,
                 verifications: Verifications, entry: PhaseWork, gates: Gates) -> None:
        self._st = st
        self._capture = capture
        self._repairs = repairs
        self._fencing = fencing
        self._verifications = verifications
        self._entry = entry
        self._gates = gates

    async def advance(self, req: TransitionRequest, *, kind: str) -> TransitionResult:
        async with self._st.lock:
            stale = phases.stale_advance(self._st.view(req.tenant), req)
            if stale:  # a repeated / concurrent advance: the phase it meant to leave is already left
                self._st.count("advances_already_done")
                return self._st.result(True, stale, tenant=req.tenant)
            try:
                to = phases.resolve_advance(self._st.view(req.tenant), req)
            except phases.Rejected as exc:
                return self._st.result(False, str(exc), tenant=req.tenant)
            frm = self._st.phase_of(req.tenant)
            label = f"{who(req.tenant)}{frm} -> {to}"
            self._st.transitioning = label
            try:
                gate: GateResult | None = None
                if to in phases.GATED:
                    gate = await self._gates.gate(to, req.tenant, label, dry_run=req.dry_run)
                try:
                    plan = phases.plan_advance(self._st.view(req.tenant, planning=True), req, gate, kind)
                except phases.Rejected as exc:
                    return self._st.result(False, str(exc), tenant=req.tenant, gate=gate,
                                           would=self._would(frm, to, req, gate) if req.dry_run else [])
                if req.dry_run:
                    note = " (forced past a failing gate)" if plan.kind == "force" else ""
                    return self._st.result(True, f"dry run: {label} would be accepted{note}", tenant=req.tenant,
                                           gate=gate, would=self._would(frm, to, req, gate))
                if plan.kind == "force":
                    self._st.count("forced_transitions")
                if to is Phase.CLEANUP:
                    self._st.s.cleanup_drop = req.drop_old_tables or self._st.s.cleanup_drop
                reason = req.reason
                if to is Phase.CLEANUP and kind == "advance":
                    reason = (reason + "; " if reason else "") + "CLEANUP confirmed" + (
                        ", old tables will be DROPPED" if self._st.s.cleanup_drop else "")
                refused = await self._fencing.fence_for(plan, override_stuck=req.override_stuck_repairs)
                if refused:
                    return self._st.result(False, refused, tenant=req.tenant, gate=gate)
                reason = _with_override(reason, self._fencing.overridden)
                await self.enter(plan, by=req.by, reason=reason)
                await self._capture.lift_denial(plan)
                return self._st.result(True, f"{label} (epoch {self._st.s.epoch}); waiting for the phase barrier",
                                       tenant=req.tenant, gate=gate)
            finally:
                self._st.transitioning = ""

    def _would(self, frm: Phase, to: Phase, req: TransitionRequest, gate: GateResult | None) -> list[str]:
        """What an advance would change, in words (dry runs)."""
        s = self._st.s
        scope_name = f"tenant {req.tenant}" if req.tenant else "the migration"
        out = [f"{scope_name}: {frm} -> {to}; epoch {s.epoch} -> {s.epoch + 1} published to applications, then the "
               "phase barrier waits for every live instance"]
        if phases.reads_from(frm) != phases.reads_from(to):
            out.append(f"reads: served from the {phases.reads_from(to)} store")
        if phases.authoritative(frm) != phases.authoritative(to):
            out.append(f"writes: the {phases.authoritative(to)} store becomes authoritative (written first), "
                       f"the {phases.authoritative(frm)} store is kept in sync for rollback")
            held = _stuck_repairs_note(gate, phases.authoritative(frm), phases.authoritative(to))
            if held:
                out.append(held)
            if req.tenant is None and self._st.method.database_capture and not self._st.spec.tenant_tables:
                losing, gaining = phases.authoritative(frm), phases.authoritative(to)
                out.append(f"an application writing without the adapter: from the flip on, its writes to the "
                           f"{losing} store ({getattr(self._st.spec, losing)}) are REFUSED with an error naming the "
                           f"{gaining} store ({getattr(self._st.spec, gaining)}); point it there, where they are "
                           "accepted once the flip is published. Nothing it wrote before is lost: the "
                           f"{losing} store's key log is drained first")
        if req.tenant is None:
            following = sorted(t for t, p in self._st.tenant_phases().items() if p.rank <= to.rank)
            if following:
                out.append("tenants following the migration again: " + ", ".join(following))
        recon = next((m for m in gate.metrics if m.name == "reconciliation_gap"), None) if gate else None
        if recon is not None and recon.verdict.value == "not-yet":
            out.append("first: a compare-only verification (the last one is too old for the gate's window)")
        if to in phases.GATED and to is not Phase.CLEANUP:
            out.append(f"then: verify {'new -> old' if phases.verification_reverse(to) else 'old -> new'} "
                       "with repair")
        if to is Phase.CLEANUP:
            drop = req.drop_old_tables or s.cleanup_drop
            out.append("POINT OF NO RETURN: mirroring stops, capture triggers and key logs are removed, pending "
                       "repairs towards the old store are discarded; no rollback afterwards")
            for t in self._st.spec.tables:
                out.append(f"old table {t.source}: " + ("DROPPED" if drop else
                                                        f"renamed to {retired_name(t.source, '<time>')}"))
        return out

    async def rollback(self, req: TransitionRequest, *, kind: str = "rollback") -> TransitionResult:
        async with self._st.lock:
            s = self._st.s
            try:
                plan = phases.plan_rollback(self._st.view(req.tenant), req, kind)
            except phases.Rejected as exc:
                return self._st.result(False, str(exc), tenant=req.tenant)
            label = f"{who(req.tenant)}rollback {plan.frm} -> {plan.to}"
            if req.dry_run:
                first = [f"verify new -> old{' for tenant ' + t if t else ''} with repair" for t in plan.verify_first]
                return self._st.result(True, f"dry run: {label} would be accepted"
                                       + (" after verifying new -> old" if plan.verify_first else ""),
                                       tenant=req.tenant, would=first)
            self._st.transitioning = label
            s.rolling_back = label + f" ({req.reason})"
            self._st.wake += 1
            try:
                if req.tenant is None:
                    was_done = s.phase_work_done
                    await self._entry.cancel()
                else:
                    was_done = True
                    await self._entry.cancel_tenant(req.tenant)
                if plan.verify_first:
                    # The old store becomes authoritative again: first make it hold every write the new store
                    # acknowledged (queued repairs first, then verify new -> old and repair what differs).
                    refused = await self.level_old_store(plan)
                    if refused:
                        if req.tenant is None and not was_done:
                            self._entry.start()
                        return self._st.result(False, refused, tenant=req.tenant)
                refused = await self._fencing.fence_for(plan, override_stuck=req.override_stuck_repairs)
                if refused:
                    if req.tenant is None and not was_done:
                        self._entry.start()
                    return self._st.result(False, refused, tenant=req.tenant)
                self._st.count("rollbacks")
                if kind == "auto-rollback":
                    self._st.count("auto_rollbacks")
                await self.enter(plan, by=req.by, reason=_with_override(req.reason, self._fencing.overridden))
                await self._capture.lift_denial(plan)
                held = self._hold_after_manual_rollback(plan, req, kind)
                return self._st.result(True, f"{label} (epoch {s.epoch}); waiting for the phase barrier{held}",
                                       tenant=req.tenant)
            finally:
                s.rolling_back = ""
                self._st.transitioning = ""

    async def level_old_store(self, plan: phases.Plan) -> str:
        """Drain queued repairs, then verify new -> old with repair for each scope; '' when all are clean."""
        note = self._st.note_for(plan.tenant)
        note(f"rollback: catching up the old store ({plan.frm} -> {plan.to})")
        await self._repairs.drain_once()
        # outbox / triggers: writes the new store acknowledged wait in its key log until the relay mirrors
        # them; mirror everything logged up to now first, so the verification below compares settled rows
        # and only keys logged after this point (still in the log: in flight, mirrored by the relay) differ
        caught = await self._capture.catch_up_logs("before the rollback", note)
        if caught is not None and not caught.reached:
            note("")
            self._st.count("rollbacks_refused")
            errors = f" ({'; '.join(caught.errors)})" if caught.errors else ""
            return (f"rollback refused: the key logs still hold {caught.behind} entries logged before the rollback "
                    f"after {caught.seconds:.0f} s of mirroring{errors}; the old store is not level, "
                    f"{'tenant ' + plan.tenant if plan.tenant else 'the migration'} stays in {plan.frm}")
        for scope in plan.verify_first:
            note(f"rollback: verifying new -> old{' for tenant ' + scope if scope else ''} before flipping "
                 "authority")
            try:
                summary = await self._verifications.run(reverse=True, repair=True, reason="rollback", tenant=scope)
            except (ActivityError, ChildWorkflowError) as exc:
                if is_cancelled_exception(exc):
                    raise
                summary = VerificationSummary(at=workflow.now(), ok=False, rows_compared=0, direction="new->old",
                                              tenant=scope)
                workflow.logger.warning("rollback verification failed: %s", failure_message(exc))
            if not summary.ok:
                note("")
                self._st.count("rollbacks_refused")
                where = f"tenant {scope}'s rows" if scope else "the old store"
                return (f"rollback refused: {where} could not be brought level with the new store ("
                        + verification_text(summary) + f"); {'tenant ' + scope if scope else 'the migration'} "
                        f"stays in {plan.frm}")
        note("")
        return ""

    def _hold_after_manual_rollback(self, plan: phases.Plan, req: TransitionRequest, kind: str) -> str:
        """Auto mode: an operator who rolled back wants the migration to stay there, not to re-advance in
        the same second (and rerun the backfill). Hold it until the operator releases the hold; automatic
        rollbacks place their own hold. Returns what to add to the result."""
        s = self._st.s
        if (kind != "rollback" or plan.tenant is not None or self._st.spec.mode.value != "auto"
                or phases.GLOBAL in s.holds or not workflow.patched(ROLLBACK_HOLDS_AUTO_PATCH)):
            return ""
        s.holds[phases.GLOBAL] = HoldState(
            by=req.by or "rollback", at=workflow.now(),
            reason=f"auto mode held after a manual rollback {plan.frm} -> {plan.to} ({req.reason}); "
                   f"`dualwrite hold {self._st.spec.name} --release` lets it advance again")
        self._st.record(plan.to, plan.to, "hold", req.by, "auto mode held after a manual rollback")
        return "; auto mode holds here until `hold --release`"

    async def enter(self, plan: phases.Plan, *, by: str, reason: str) -> None:
        """Carry out a decided phase change (the caller holds the lock, checked the gate, levelled stores)."""
        s = self._st.s
        now = workflow.now()
        if plan.tenant is None:
            await self._entry.cancel()
            s.phase = plan.to
            s.phase_entered_at = now
            s.phase_work_done = False
            s.approved_for = None
            s.work_state = "publishing"
            s.entered_by_rollback = plan.kind in ROLLBACK_KINDS
            keep = {t.tenant: t for t in s.tenants}
            s.tenants = [keep[t].model_copy(update={"phase": p, "work_done": True, "work_state": ""})
                         for t, p in plan.tenants_after.items() if t in keep]
            if plan.to.rank <= Phase.BACKFILL.rank:
                s.backfill_done = False
            if plan.to is Phase.BACKFILL:
                for t in s.tables:
                    t.rows_copied, t.percent, t.ranges_done, t.done, t.eta_seconds = 0, 0, 0, False, None
                s.backfill_percent_step = 0
                workflow.upsert_search_attributes([BACKFILL_PERCENT.value_set(0)])
            workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(plan.to.value)])
            if phases.continuous_verification(plan.to) and self._st.spec.verify_interval_seconds > 0:
                if s.next_verify_at is None:
                    self._verifications.schedule()
            else:
                s.next_verify_at = None
        else:
            await self._entry.cancel_tenant(plan.tenant)
            ts = self._st.tenant(plan.tenant)
            if plan.tenant in plan.tenants_after:
                if ts is None:
                    ts = TenantState(tenant=plan.tenant, phase=plan.to)
                    s.tenants.append(ts)
                ts.phase, ts.entered_at, ts.work_done, ts.approved_for = plan.to, now, False, None
                ts.work_state = "publishing"
            else:
                s.tenants = [t for t in s.tenants if t.tenant != plan.tenant]
        s.epoch += 1
        self._st.record(plan.frm, plan.to, plan.kind, by, reason, tenant=plan.tenant, gate_passed=plan.gate_passed)
        await self._fencing.publish()
        if plan.tenant is None:
            self._entry.start()
        else:
            self._entry.start_tenant(plan.tenant, plan.to, s.epoch, after_rollback=plan.kind in ROLLBACK_KINDS)
        self._st.gate_dirty = True
        self._st.wake += 1

    async def maybe_auto_advance(self) -> None:
        if self._st.spec.mode.value != "auto" or self._st.lock.locked():
            return
        view = self._st.view()
        to, _why = phases.auto_target(view)
        if to is None:
            return
        if to in phases.GATED:
            due = self._st.gate_dirty or self._st.gate_checked_at is None or (
                workflow.now() - self._st.gate_checked_at).total_seconds() >= self._st.tuning.gate_recheck_seconds
            if not due:
                return
        s = self._st.s
        if to is Phase.CLEANUP:
            confirmed_by = "the spec (auto_cleanup)" if self._st.spec.auto_cleanup and s.approved_for is not to \
                else "an approval"
            req = TransitionRequest(to=to, by="auto", reason=f"phase work done, gate passed; CLEANUP confirmed by "
                                    f"{confirmed_by}", confirm_cleanup=True, drop_old_tables=s.cleanup_drop,
                                    confirm_drop=self._st.spec.name if s.cleanup_drop else "")
        else:
            req = TransitionRequest(to=to, by="auto", reason="phase work done, gate passed")
        await self.advance(req, kind="auto")


def verification_text(v: VerificationSummary) -> str:
    errors = "; ".join(f"{t.source}: {t.error}" for t in v.tables if t.error)
    repaired = f", {v.repaired} repaired in the {v.repaired_into} store" if v.repaired else ""
    return (f"{v.verdict} ({v.direction}: {v.rows_compared} rows compared, missing {v.missing}, extra {v.extra}, "
            f"field-different {v.field_different}{repaired})" + (f"; {errors}" if errors else ""))


def _with_override(reason: str, overridden: str) -> str:
    """The transition's recorded reason, with what the operator's override of stuck repairs gave up."""
    return f"{reason}; {overridden}" if reason and overridden else reason or overridden


def _stuck_repairs_note(gate: GateResult | None, losing: str, gaining: str) -> str:
    """A dry run of a flip: the repair-queue keys of the moving scope that the write fence would try again and,
    if they still cannot be mirrored, refuse the flip for (the gate's evidence: counts per table, no keys)."""
    metric = next((m for m in gate.metrics if m.name == "repair_queue"), None) if gate else None
    if metric is None or not metric.value:
        return ""
    return (f"the write fence: {metric.detail}. Under the fence each is tried again; while any cannot be mirrored "
            f"into the {gaining} store the flip is refused (their writes are acknowledged on the {losing} store "
            "only). Fix the cause and advance again, or advance with --override-stuck-repairs --reason TEXT to move "
            f"anyway (those keys then take the {gaining} store's rows)")
