"""Operator requests that move no phase: pause / resume, approve, hold / release, verify now."""

from __future__ import annotations

import asyncio
import contextlib

from temporalio import workflow

from workflows.migration._fence import WriteFence
from workflows.migration._state import MigrationState, scope_key, who
from workflows.migration._verification import Verifications

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.models import HoldState, PauseState, Phase, TenantState, TransitionRequest, TransitionResult


class Requests:
    """Pause, approve, hold and verification requests."""

    def __init__(self, st: MigrationState, fencing: WriteFence, verifications: Verifications) -> None:
        self._st = st
        self._fencing = fencing
        self._verifications = verifications

    async def pause(self, req: TransitionRequest, *, paused: bool) -> TransitionResult:
        async with self._st.lock:
            s = self._st.s
            rule = phases.check_pause if paused else phases.check_resume
            try:
                rule(self._st.view(), req)
            except phases.Rejected as exc:
                return self._st.result(False, str(exc))
            if req.dry_run:
                return self._st.result(True, f"dry run: {'pause' if paused else 'resume'} would be accepted")
            s.paused = paused
            self._st.record(s.phase, s.phase, "pause" if paused else "resume", req.by, req.reason)
            await self._fencing.publish()
            for child in self._st.backfill_children:
                with contextlib.suppress(Exception):  # a finished child needs no pause
                    await workflow.get_external_workflow_handle(child).signal("set_paused", PauseState(paused=paused))
            if not paused and s.next_verify_at is not None and s.next_verify_at < workflow.now():
                self._verifications.schedule()
            self._st.gate_dirty = True
            self._st.wake += 1
            return self._st.result(True, f"{'paused' if paused else 'resumed'} in {s.phase}")

    async def approve(self, req: TransitionRequest) -> TransitionResult:
        s = self._st.s
        try:
            to = phases.resolve_approve(self._st.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._st.result(False, str(exc), tenant=req.tenant)
        frm = self._st.phase_of(req.tenant)
        if req.dry_run:
            return self._st.result(True, f"dry run: approving {who(req.tenant)}{frm} -> {to} would be accepted",
                                   tenant=req.tenant)
        ts = self._st.tenant(req.tenant)
        if req.tenant is not None and ts is None:
            # a tenant that follows the migration gets its own entry once it moves; remember the approval
            ts = TenantState(tenant=req.tenant, phase=frm, entered_at=workflow.now())
            s.tenants.append(ts)
        if ts is not None:
            ts.approved_for = to
        else:
            s.approved_for = to
            if to is Phase.CLEANUP:
                s.cleanup_drop = req.drop_old_tables
        self._st.record(frm, frm, "approve", req.by, req.reason or f"approved {frm} -> {to}", tenant=req.tenant)
        self._st.gate_dirty = True
        self._st.wake += 1
        return self._st.result(True, f"approved {who(req.tenant)}{frm} -> {to}", tenant=req.tenant)

    async def hold(self, req: TransitionRequest) -> TransitionResult:
        s = self._st.s
        try:
            phases.check_hold(self._st.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._st.result(False, str(exc), tenant=req.tenant)
        scope = scope_key(req.tenant)
        what = f"tenant {req.tenant}" if req.tenant else "the migration"
        if req.dry_run:
            return self._st.result(True, f"dry run: {'releasing' if req.release else 'holding'} {what} would be "
                                      "accepted", tenant=req.tenant)
        phase = self._st.phase_of(req.tenant)
        if req.release:
            s.holds.pop(scope, None)
            self._st.record(phase, phase, "release", req.by, req.reason or "hold released", tenant=req.tenant)
        else:
            s.holds[scope] = HoldState(by=req.by, reason=req.reason, at=workflow.now())
            self._st.record(phase, phase, "hold", req.by, req.reason, tenant=req.tenant)
        self._st.gate_dirty = True
        self._st.wake += 1
        return self._st.result(True, f"{what} {'released' if req.release else 'held'} in {phase}", tenant=req.tenant)

    async def request_verify(self, req: TransitionRequest) -> TransitionResult:
        try:
            phases.check_verify(self._st.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._st.result(False, str(exc), tenant=req.tenant)
        if req.dry_run:
            return self._st.result(True, "dry run: a verification would start", tenant=req.tenant)
        if req.tenant is not None:
            self._st.verify = asyncio.create_task(self._verifications.task(True, "on demand", tenant=req.tenant))
            self._st.count("verifications_requested")
            self._st.wake += 1
            return self._st.result(True, f"verification of tenant {req.tenant} started", tenant=req.tenant)
        self._st.s.verify_requested = True
        self._st.count("verifications_requested")
        self._st.wake += 1
        return self._st.result(True, "verification requested" + (
            "; it starts when the current phase work is done" if not self._st.s.phase_work_done else ""))
