"""Abort: authority back to the old store (as a rollback to PREPARE), then capture, relay, children and
control rows removed; the workflow completes."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import ABORTED
from workflows.migration._fence import WriteFence
from workflows.migration._state import MigrationState
from workflows.migration._transitions import Transitions
from workflows.migration._work import PhaseWork

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.models import (
        MIGRATION_PHASE,
        AbortCleanupInput,
        AbortCleanupResult,
        AbortRecord,
        ActivityNames,
        BarrierStatus,
        ControlInput,
        Phase,
        TransitionRequest,
        TransitionResult,
    )
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class Abort:
    """Abandons the migration."""

    def __init__(self, st: MigrationState, capture: Capture, fencing: WriteFence, entry: PhaseWork,
                 transitions: Transitions) -> None:
        self._st = st
        self._capture = capture
        self._fencing = fencing
        self._entry = entry
        self._transitions = transitions

    async def abort(self, req: TransitionRequest) -> TransitionResult:
        """Abandon the migration: authority back to the old store, then its capture, relay, children and control
        rows removed; the workflow completes. The old store's rows are never written here (a rollback out of
        CUTOVER_WRITES levels it first, as any rollback does); the new store keeps its data for the operator."""
        s = self._st.s
        self._st.aborting = True
        try:
            async with self._st.lock:
                try:
                    phases.check_abort(self._st.view(), req)
                except phases.Rejected as exc:
                    return self._st.result(False, str(exc))
                frm = s.phase
                self._st.transitioning = f"abort in {frm} ({req.reason})"
                self._st.wake += 1
                try:
                    return await self._abort_locked(req, frm)
                except (ActivityError, ChildWorkflowError) as exc:
                    if is_cancelled_exception(exc):
                        raise
                    s.work_state = f"abort stopped: {failure_message(exc)}; abort again to finish it"
                    return self._st.result(False, f"abort stopped in {s.phase}: {failure_message(exc)}; "
                                               "abort again to finish it")
                finally:
                    self._st.transitioning = ""
        finally:
            self._st.aborting = False

    async def _abort_locked(self, req: TransitionRequest, frm: Phase) -> TransitionResult:
        s = self._st.s
        was_done = s.phase_work_done
        await self._entry.cancel()  # backfill and verification children are cancelled with their tasks
        live_seen = True
        levelled = False
        if frm is not Phase.PREPARE:
            plan = phases.plan_rollback(self._st.view(planning=True),
                                        TransitionRequest(to=Phase.PREPARE, reason=req.reason, by=req.by), "abort")
            levelled = bool(plan.verify_first)
            refused = await self._transitions.level_old_store(plan) if plan.verify_first else ""
            refused = refused or await self._fencing.fence_for(plan)
            if refused:
                if not was_done:
                    self._entry.start()
                for kind in ("rollback refused", "advance refused"):
                    refused = refused.replace(kind, "abort refused", 1)
                return self._st.result(False, refused)
            await self._transitions.enter(plan, by=req.by, reason=req.reason)  # recorded as kind "abort"
            await self._entry.cancel()  # PREPARE's entry work (the preflight) is not wanted: it never starts
            s.work_state = "abort: waiting for live instances to see the old store authoritative"
            self._st.wake += 1
            wait = self._st.tuning.barrier_poll_seconds
            barrier = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._st.spec.name, control_store=self._st.spec.control, phase=s.phase,
                             epoch=s.epoch, max_wait_seconds=wait),
                start_to_close_timeout=timedelta(seconds=wait + 120),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._st.tuning.heartbeat_timeout_seconds)),
                retry_policy=ACTIVITY_RETRY, result_type=BarrierStatus, summary=f"abort barrier epoch {s.epoch}")
            live_seen = barrier.passed
        if self._st.method.relayed:
            await self._capture.finish_relay("abort")
        s.work_state = "abort: removing triggers, key-log entries and control rows"
        self._st.wake += 1
        res = await workflow.execute_activity(
            ActivityNames.ABORT_CLEANUP, AbortCleanupInput(spec=self._st.spec, remove_state=live_seen),
            start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=timedelta(seconds=60),
            retry_policy=ACTIVITY_RETRY, result_type=AbortCleanupResult,
            summary="abort: remove capture and control rows")
        removed = [f"{len(res.triggers_removed)} capture triggers"] if res.triggers_removed else []
        removed += [f"{res.log_entries_deleted} key-log entries", f"{res.repair_entries_deleted} queued repairs",
                    f"{res.control_rows_deleted} control rows"]
        untouched = ("brought level with the new store first (writes it acknowledged carried back), nothing else "
                     "written to it" if levelled else "its data untouched by the abort")
        message = (f"aborted in {frm}: the old store is authoritative, {untouched}; removed {', '.join(removed)}"
                   + ("; the relay was told to finish" if self._st.method.relayed else "")
                   + (("; the published state stays (PREPARE) because some live instances had not seen it yet: "
                       "they pick it up on their next read") if not live_seen else "")
                   + f". The new store's tables ({', '.join(t.target_table for t in self._st.spec.tables)}) and "
                   f"their data in {self._st.spec.new} are left as they are: drop or keep them yourself")
        s.phase_work_done, s.work_state, s.repair_queue_depth = True, "", 0
        if s.bypass is not None and s.bypass.old_store:  # ABORT_CLEANUP lifted the old store's refusal
            s.bypass = s.bypass.model_copy(update={"old_store": ""})
        s.aborted = AbortRecord(by=req.by, reason=req.reason, at=workflow.now(), from_phase=frm, message=message)
        if frm is Phase.PREPARE:  # else _enter recorded it
            self._st.record(frm, s.phase, "abort", req.by, req.reason)
        workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(ABORTED)])
        self._st.wake += 1
        return self._st.result(True, message)
