"""Each phase's entry work: publish, wait for the phase barrier, then preflight, backfill children and a
verification, a verification, or retiring the old store; a tenant's own entry work likewise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import SPEC_REF_RETIRE_PATCH
from workflows.migration._fence import WriteFence
from workflows.migration._repairs import RepairDrain
from workflows.migration._specref import published_spec_ref, spec_or_ref
from workflows.migration._state import MigrationState, cancel_task
from workflows.migration._verification import Verifications

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.backfill import BackfillWorkflow
    from workflows.models import (
        BACKFILL_PERCENT,
        ActivityNames,
        BackfillInput,
        BackfillResult,
        BarrierStatus,
        ControlInput,
        PauseState,
        Phase,
        PrepareInput,
        PrepareResult,
        RetireInput,
        RetireResult,
        TableRef,
    )
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class PhaseWork:
    """Starts, cancels and carries out the entry work of the migration and of its tenants."""

    def __init__(self, st: MigrationState, capture: Capture, repairs: RepairDrain, fencing: WriteFence,
                 verifications: Verifications) -> None:
        self._st = st
        self._capture = capture
        self._repairs = repairs
        self._fencing = fencing
        self._verifications = verifications

    def start(self) -> None:
        self._st.work = asyncio.create_task(self._phase_work(self._st.s.phase, self._st.s.epoch))

    async def cancel(self) -> None:
        for task in (self._st.work, self._st.verify, *self._st.tenant_work.values()):
            if task is not None:
                await cancel_task(task)
        self._st.work = None
        self._st.verify = None
        self._st.tenant_work = {}
        for ts in self._st.s.tenants:
            ts.work_done, ts.work_state = True, ""
        self._st.backfill_children = []

    async def cancel_tenant(self, tenant: str) -> None:
        task = self._st.tenant_work.pop(tenant, None)
        if task is not None:
            await cancel_task(task)

    async def _phase_work(self, phase: Phase, epoch: int) -> None:
        s = self._st.s
        try:
            if phase is Phase.PREPARE:
                s.work_state = "preflight"
                self._st.wake += 1
                prep = await workflow.execute_activity(
                    ActivityNames.PREPARE, PrepareInput(spec=self._st.spec, rollback=s.entered_by_rollback),
                    start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=self._st.short_heartbeat(),
                    retry_policy=ACTIVITY_RETRY, result_type=PrepareResult, summary="preflight")
                for t in s.tables:
                    for p in prep.tables:
                        if p.source == t.source:
                            t.rows_estimate = p.rows_estimate
                await published_spec_ref(self._st)
                await self._capture.ensure_relay()
            if phase is not Phase.CLEANUP and phase is not Phase.DONE:
                side = phases.authoritative(phase)
                await self._capture.deny_writes(deny=["new" if side == "old" else "old"], allow=[], authoritative=side)
            await self._capture.bypass_capture_for(phase)
            await self._capture.refuse_old_for(phase)
            if s.published_epoch < epoch:
                await self._fencing.publish()
            await self._barrier(epoch, self._set_work_state)
            if phase is Phase.BACKFILL:
                await self._backfill()
                s.work_state = "verifying after backfill"
                self._st.wake += 1
                await self._verifications.run(reverse=False, repair=True, reason="after backfill")
                s.backfill_done = True
            elif phase in (Phase.SHADOW_READ, Phase.CUTOVER_READS, Phase.CUTOVER_WRITES):
                if s.entered_by_rollback:
                    # writes acknowledged under the previous authority during the barrier may wait in the
                    # repair queue: mirror them before a repairing verification could overwrite them
                    s.work_state = "draining the repair queue after the rollback"
                    self._st.wake += 1
                    await self._repairs.drain_once()
                await self._capture.catch_up_logs(f"entering {phase}", self._set_work_state)
                s.work_state = f"verifying on entering {phase}"
                self._st.wake += 1
                await self._verifications.run(reverse=phases.verification_reverse(phase), repair=True,
                                              reason=f"entering {phase}")
            elif phase is Phase.CLEANUP:
                await self._retire_old_store()
            s.phase_work_done = True
            s.work_state = ""
        except (ActivityError, ChildWorkflowError, ApplicationError) as exc:
            if is_cancelled_exception(exc):
                raise
            msg = failure_message(exc)
            s.work_state = (f"{phase} work failed: {msg}; fix the cause, then roll back and advance again "
                            "to retry")
            self._st.count("phase_work_failures")
            workflow.logger.error("migration %s: %s work failed: %s", self._st.spec.name, phase, msg)
            if phase is Phase.PREPARE and epoch == 1:
                self._st.fatal = ApplicationError(f"PREPARE failed: {msg}", type="PreflightFailed",
                                                  non_retryable=True)
        finally:
            self._st.gate_dirty = True
            self._st.wake += 1

    def _set_work_state(self, text: str) -> None:
        self._st.s.work_state = text

    def start_tenant(self, tenant: str, phase: Phase, epoch: int, *, after_rollback: bool = False) -> None:
        self._st.tenant_work[tenant] = asyncio.create_task(self._tenant_phase_work(tenant, phase, epoch,
                                                                                   after_rollback))

    async def _tenant_phase_work(self, tenant: str, phase: Phase, epoch: int, after_rollback: bool) -> None:
        """A tenant's entry work: the barrier, then a verification of its rows in its authority's direction."""

        def note(text: str) -> None:
            ts = self._st.tenant(tenant)
            if ts is not None:
                ts.work_state = text
            self._st.wake += 1

        try:
            await self._barrier(epoch, note)
            if after_rollback:
                note("draining the repair queue after the rollback")
                await self._repairs.drain_once()
                await self._capture.catch_up_logs(f"tenant {tenant} entering {phase}", note)
            note(f"verifying tenant {tenant} on entering {phase}")
            await self._verifications.run(reverse=phases.verification_reverse(phase), repair=True,
                                          reason=f"tenant {tenant} entering {phase}", tenant=tenant)
            note("")
        except (ActivityError, ChildWorkflowError, ApplicationError) as exc:
            if is_cancelled_exception(exc):
                raise
            note(f"{phase} work failed: {failure_message(exc)}")
            self._st.count("phase_work_failures")
        finally:
            ts = self._st.tenant(tenant)
            if ts is not None and ts.phase is phase:
                ts.work_done = True
            self._st.gate_dirty = True
            self._st.wake += 1

    async def _barrier(self, epoch: int, note: Callable[[str], None]) -> None:
        s = self._st.s
        note(f"barrier: waiting for live instances to see epoch {epoch}")
        while True:
            status = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._st.spec.name, control_store=self._st.spec.control, phase=s.phase,
                             epoch=epoch, max_wait_seconds=self._st.tuning.barrier_poll_seconds),
                start_to_close_timeout=timedelta(seconds=self._st.tuning.barrier_poll_seconds + 120),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._st.tuning.heartbeat_timeout_seconds)),
                retry_policy=ACTIVITY_RETRY, result_type=BarrierStatus, summary=f"barrier epoch {epoch}")
            if status.passed:
                self._st.count("barriers_passed")
                return
            note(f"barrier: {len(status.lagging)} of {status.live_instances} live instances have "
                 f"not seen epoch {epoch} ({', '.join(status.lagging[:5])})")
            self._st.wake += 1

    async def _retire_old_store(self) -> None:
        """CLEANUP (applications stopped mirroring at the barrier): finish the relay, remove capture and key
        logs, discard repairs towards the old store, and rename (or drop) the old tables."""
        s = self._st.s
        if self._st.method.relayed:
            await self._capture.finish_relay("cleanup")
        s.work_state = "cleanup: " + ("dropping" if s.cleanup_drop else "renaming") + " the old tables"
        self._st.wake += 1
        entered = s.phase_entered_at or workflow.now()
        spec = await spec_or_ref(self._st, SPEC_REF_RETIRE_PATCH)
        res = await workflow.execute_activity(
            ActivityNames.RETIRE_OLD, RetireInput(**spec, drop=s.cleanup_drop,
                                                  stamp=entered.strftime("%Y%m%d%H%M%S")),
            start_to_close_timeout=timedelta(minutes=30), heartbeat_timeout=self._st.short_heartbeat(),
            retry_policy=ACTIVITY_RETRY, result_type=RetireResult,
            summary="retire the old store")
        s.retirement = res
        s.repair_queue_depth = 0
        self._st.record(s.phase, s.phase, "cleanup", "workflow",
                        "; ".join(f"{t.source} {t.action}" + (f" as {t.retired_as}" if t.retired_as else "")
                               for t in res.tables))

    async def _backfill(self) -> None:
        s = self._st.s
        s.backfill_runs += 1
        run = s.backfill_runs
        wid = workflow.info().workflow_id
        s.work_state = "backfill: planning ranges"
        self._st.wake += 1
        handles = []
        self._st.backfill_children = []
        ref = await published_spec_ref(self._st)
        for t in self._st.spec.tables:
            child_id = f"{wid}-backfill-{t.source}-{run}"
            handle = await workflow.start_child_workflow(
                BackfillWorkflow.run,
                BackfillInput(table=TableRef(spec=self._st.spec, source=t.source), spec_ref=ref,
                              concurrency=self._st.spec.backfill_concurrency, ranges=self._st.tuning.backfill_ranges,
                              tuning=self._st.tuning),
                id=child_id, static_summary=f"backfill {t.source} → {t.target_table} ({self._st.spec.old} → "
                                            f"{self._st.spec.new})",
            )
            self._st.backfill_children.append(child_id)
            handles.append(handle)
        if s.paused:
            for child in self._st.backfill_children:
                await workflow.get_external_workflow_handle(child).signal("set_paused", PauseState(paused=True))
        s.work_state = f"backfill: copying {len(handles)} tables"
        self._st.wake += 1
        results: list[BackfillResult] = list(await asyncio.gather(*handles))
        for r in results:
            for tp in s.tables:
                if tp.source == r.source:
                    tp.rows_copied, tp.rows_estimate, tp.done, tp.percent = r.rows, r.rows_estimate, True, 100
                    tp.ranges_done = tp.ranges_total = r.ranges
                    tp.eta_seconds = 0.0
            self._st.count("rows_copied", r.rows)
            self._st.count("backfill_batches", r.batches)
            self._st.count("backfill_redone_batches", r.redone_batches)
            self._st.count("backfill_resumed_ranges", r.resumed_ranges)
            self._st.count("backfill_continued_as_new", r.continued_as_new)
        self._st.backfill_children = []
        self.upsert_backfill_percent(force=100)

    def upsert_backfill_percent(self, force: int | None = None) -> None:
        s = self._st.s
        if force is not None:
            percent = force
        else:
            est = sum(max(t.rows_estimate, 0) for t in s.tables)
            copied = sum(min(t.rows_copied, t.rows_estimate) for t in s.tables)
            percent = min(99, int(100 * copied / est)) if est else 0
        step = percent // 10 * 10
        if step != s.backfill_percent_step:
            s.backfill_percent_step = step
            workflow.upsert_search_attributes([BACKFILL_PERCENT.value_set(step)])
