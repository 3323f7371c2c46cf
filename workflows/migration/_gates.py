"""Gates: the evidence a gated transition is decided on (an activity result in history), refreshed by a
compare-only verification when only a stale reconciliation stands in the way."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import (
    SPEC_REF_GATES_PATCH,
    WORKER_SAMPLE_DATABASE_LOG_PATCH,
    WORKER_SAMPLE_PATCH,
)
from workflows.migration._specref import spec_or_ref
from workflows.migration._state import MigrationState, who
from workflows.migration._verification import Verifications

with workflow.unsafe.imports_passed_through():
    from dualwrite.capture import Evidence
    from workflows import bypass as bp
    from workflows import phases
    from workflows.models import ActivityNames, GateInput, GateResult, Phase, VerificationSummary
    from workflows.retry import ACTIVITY_RETRY, SHADOW_SAMPLE_RETRY
    from workflows.sampling import SAMPLE_SHADOW, ShadowSampleInput, ShadowSampleResult
    from workflows.verify import failure_message


class Gates:
    """Evaluates the gate into a phase."""

    def __init__(self, st: MigrationState, capture: Capture, verifications: Verifications) -> None:
        self._st = st
        self._capture = capture
        self._verifications = verifications

    async def gate(self, to: Phase, tenant: str | None, label: str, *, dry_run: bool) -> GateResult:
        """Evaluate the gate into ``to``. When everything but a stale reconciliation passes, verify first
        (compare only, so the evidence names what differs) and evaluate again: a full verification is only
        paid for when it can decide the gate."""
        s = self._st.s
        ts = self._st.tenant(tenant)
        phase = self._st.phase_of(tenant)
        v = ts.last_verification if ts is not None else (None if tenant is not None else s.last_verification)
        direction = "new->old" if phases.verification_reverse(phase) else "old->new"
        result = await self._evaluate_gate(to, tenant, v, label, dry_run=dry_run)
        recon = next((m for m in result.metrics if m.name == "reconciliation_gap"), None)
        stale = recon is not None and recon.verdict.value == "not-yet"
        others_pass = all(m.ok for m in result.metrics if m.name != "reconciliation_gap")
        if stale and others_pass and not dry_run:
            self._st.transitioning = f"{label} (verifying {direction} for the gate)"
            self._st.wake += 1
            try:
                v = await self._verifications.run(reverse=direction == "new->old", repair=False, reason="gate",
                                                  tenant=tenant)
            except (ActivityError, ChildWorkflowError) as exc:
                if is_cancelled_exception(exc):
                    raise
                workflow.logger.warning("gate verification failed: %s", failure_message(exc))
            result = await self._evaluate_gate(to, tenant, v, label, dry_run=dry_run)
        self._st.transitioning = label
        if not dry_run:
            if ts is not None:
                ts.gate = result.model_dump(mode="json")
            elif tenant is None:
                s.gate = result.model_dump(mode="json")
                self._st.gate_dirty = False
                self._st.gate_checked_at = workflow.now()
        return result

    async def _evaluate_gate(self, to: Phase, tenant: str | None, v: VerificationSummary | None, label: str, *,
                             dry_run: bool) -> GateResult:
        s = self._st.s
        ts = self._st.tenant(tenant)
        phase = self._st.phase_of(tenant)
        self._st.transitioning = f"{label} (evaluating the gate)"
        self._st.wake += 1
        if self._worker_samples() and to in phases.TRAFFIC_GATED and workflow.patched(self._sample_patch()):
            await self._worker_shadow_sample(label)
        bypass_gated = (to in phases.TRAFFIC_GATED and tenant is None and bp.applies(self._st.spec)
                        and workflow.patched(bp.BYPASS_PATCH))
        if bypass_gated:
            await self._capture.collect_bypass()
        percent = 100 if s.backfill_done else min((t.percent for t in s.tables), default=0)
        approved = (ts.approved_for if ts is not None else (None if tenant is not None else s.approved_for)) is to
        spec = await spec_or_ref(self._st, SPEC_REF_GATES_PATCH)
        result: GateResult = await workflow.execute_activity(
            ActivityNames.EVALUATE_GATE,
            GateInput(**spec, phase=phase, to=to, backfill_percent=percent,
                      backfill_done=s.backfill_done, last_verification=v, phase_entered_at=s.phase_entered_at,
                      repair_queue_depth=s.repair_queue_depth, approved=approved, tenant=tenant,
                      at=workflow.now()),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._st.short_heartbeat(),
            retry_policy=ACTIVITY_RETRY, result_type=GateResult,
            summary=f"gate {who(tenant)}{phase} -> {to}{' (dry run)' if dry_run else ''}")
        self._st.count("gate_evaluations")
        if bypass_gated:
            window = self._st.spec.gates.window_seconds
            metric = bp.gate_metric(s.bypass, workflow.now() - timedelta(seconds=window), window)
            result.metrics.append(metric)
            result.checks[metric.name] = metric.ok
            result.evidence[metric.name] = [g.model_dump(mode="json") for g in
                                            bp.in_window(s.bypass, workflow.now() - timedelta(seconds=window))]
            if not metric.ok:
                result.passed = False
                result.reasons.append(metric.detail)
        return result

    def _worker_samples(self) -> bool:
        """The worker samples rows itself before a traffic gate where no adapter reads both stores (the
        evidence is the worker's): ``triggers`` and ``cdc``."""
        return self._st.method.evidence is Evidence.WORKER

    def _sample_patch(self) -> str:
        """The patch that introduced the worker's sample for this method: key-log capture (``triggers``) got
        it first, database-log capture (``cdc``) later, so each method's recorded histories replay."""
        return WORKER_SAMPLE_PATCH if self._st.method.key_log is not None else WORKER_SAMPLE_DATABASE_LOG_PATCH

    async def _worker_shadow_sample(self, label: str) -> None:
        """triggers, cdc: no adapter reads both stores, so the worker samples rows itself before the gate reads
        the statistics (its verdicts land in them, named as a worker shadow sample). A failed sample only leaves
        the gate with fewer samples ("not yet"), never a pass."""
        self._st.transitioning = f"{label} (worker shadow sample)"
        self._st.wake += 1
        try:
            spec = await spec_or_ref(self._st, SPEC_REF_GATES_PATCH)
            res: ShadowSampleResult = await workflow.execute_activity(
                SAMPLE_SHADOW, ShadowSampleInput(**spec),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._st.tuning.heartbeat_timeout_seconds)),
                retry_policy=SHADOW_SAMPLE_RETRY,
                result_type=ShadowSampleResult, summary="worker shadow sample")
            self._st.count("worker_shadow_samples", res.compared)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("worker shadow sample failed: %s", failure_message(exc))
