"""Verifications of the migration: continuous (with jitter), on demand, and the ones phase work and
rollbacks run (a VerificationWorkflow child each)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._specref import published_spec_ref
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.models import Phase, VerificationSummary, VerifyInput
    from workflows.verify import VerificationWorkflow, failure_message


class Verifications:
    """Schedules and runs VerificationWorkflow children; records their summaries."""

    def __init__(self, st: MigrationState) -> None:
        self._st = st

    def schedule(self) -> None:
        interval = float(self._st.spec.verify_interval_seconds)
        if interval <= 0:
            self._st.s.next_verify_at = None
            return
        jitter = 0.8 + 0.4 * workflow.random().random()
        self._st.s.next_verify_at = workflow.now() + timedelta(seconds=interval * jitter)

    def maybe_start(self) -> None:
        s = self._st.s
        if self._st.verify is not None and not self._st.verify.done():
            return
        if not self._st.idle() or not s.phase_work_done or not self._st.verification_allowed():
            return
        due = s.next_verify_at is not None and s.next_verify_at <= workflow.now() and not s.paused
        if not (s.verify_requested or due):
            return
        on_demand = s.verify_requested
        s.verify_requested = False
        if due:
            self.schedule()
        reason = "on demand" if on_demand else "continuous"
        # before the backfill completes the new store is partial: compare only, do not "repair" it full
        repair = s.backfill_done or s.phase.rank > Phase.BACKFILL.rank
        self._st.verify = asyncio.create_task(self.task(repair, reason))

    async def task(self, repair: bool, reason: str, tenant: str | None = None) -> None:
        try:
            await self.run(reverse=phases.verification_reverse(self._st.phase_of(tenant)), repair=repair,
                           reason=reason, tenant=tenant)
        except (ActivityError, ChildWorkflowError) as exc:
            if is_cancelled_exception(exc):
                raise
            self._st.s.work_state = f"verification failed: {failure_message(exc)}"
        finally:
            self._st.gate_dirty = True
            self._st.wake += 1

    async def run(self, *, reverse: bool, repair: bool, reason: str,
                  tenant: str | None = None) -> VerificationSummary:
        """Run a VerificationWorkflow child; a tenant's verification covers its rows of the tenant tables."""
        s = self._st.s
        s.verify_runs += 1
        direction = "new->old" if reverse else "old->new"
        tables = [t.source for t in self._st.spec.tenant_tables] if tenant is not None else None
        # a migration-wide verification leaves alone the rows of tenants whose authority runs the other way
        # (it would "repair" their acknowledged writes away); their own verifications cover them
        side = "new" if reverse else "old"
        exclude = [] if tenant is not None else sorted(
            t for t, p in self._st.tenant_phases().items() if p.rank > s.phase.rank and phases.authoritative(p) != side)
        ref = await published_spec_ref(self._st)
        summary: VerificationSummary = await workflow.execute_child_workflow(
            VerificationWorkflow.run,
            VerifyInput(spec=self._st.spec, spec_ref=ref, reverse=reverse, repair=repair, reason=reason,
                        tuning=self._st.tuning, tenant=tenant, tables=tables, exclude_tenants=exclude),
            id=f"{workflow.info().workflow_id}-verify-{s.verify_runs}",
            static_summary=f"verify {self._st.spec.name} {direction}{' tenant ' + tenant if tenant else ''} ({reason})",
        )
        ts = self._st.tenant(tenant)
        if tenant is None:
            s.last_verification = summary
        elif ts is not None:
            ts.last_verification = summary
        self._st.count("verifications")
        self._st.count("rows_verified", summary.rows_compared)
        self._st.count("rows_repaired", summary.repaired)
        if not summary.ok:
            self._st.count("verification_failures")
        self._st.gate_dirty = True
        self._st.wake += 1
        return summary
