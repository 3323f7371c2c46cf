"""The repair queue: the background drain while applications mirror, and one-shot drains."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

from workflows.migration._capture import Capture
from workflows.migration._constants import SPEC_REF_REPAIRS_PATCH
from workflows.migration._specref import spec_or_ref
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from workflows import bypass as bp
    from workflows import phases
    from workflows.models import ActivityNames, Phase, RepairDrainInput, RepairDrainResult
    from workflows.relay import poller_task_queue
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class RepairDrain:
    """Mirrors the keys of failed secondary writes."""

    def __init__(self, st: MigrationState, capture: Capture) -> None:
        self._st = st
        self._capture = capture

    async def loop(self) -> None:
        """Mirror keys of failed secondary writes while applications mirror (DUAL_WRITE..CUTOVER_WRITES),
        and until the queue is empty afterwards."""
        s = self._st.s
        while not self._st.stopping:
            if not (phases.secondary_is_mirrored(s.phase) or s.repair_queue_depth > 0):
                await workflow.wait_condition(
                    lambda: phases.secondary_is_mirrored(s.phase) or s.phase is Phase.DONE or self._st.stopping)
                if s.phase is Phase.DONE or self._st.stopping:
                    return
                continue
            try:
                # Cancelling waits for the activity to stop: it notices at its next heartbeat and returns
                # what it mirrored so far, so two drains never overlap across continue-as-new.
                spec = await spec_or_ref(self._st, SPEC_REF_REPAIRS_PATCH)
                res = await workflow.execute_activity(
                    ActivityNames.DRAIN_REPAIRS,
                    RepairDrainInput(**spec, max_idle_seconds=self._st.tuning.repair_idle_seconds),
                    start_to_close_timeout=timedelta(seconds=self._st.tuning.repair_idle_seconds + 600),
                    heartbeat_timeout=timedelta(seconds=min(10.0, self._st.tuning.heartbeat_timeout_seconds)),
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    task_queue=poller_task_queue(workflow.info().task_queue),
                    retry_policy=ACTIVITY_RETRY, result_type=RepairDrainResult, summary="repair drain")
            except ActivityError as exc:
                if is_cancelled_exception(exc) or self._st.stopping:
                    return
                workflow.logger.warning("repair drain failed: %s", failure_message(exc))
                await workflow.sleep(timedelta(seconds=30))
                continue
            if s.repair_queue_depth != res.remaining:
                self._st.gate_dirty = True
            s.repair_queue_depth = res.remaining
            self._st.count("repair_mirrored", res.mirrored)
            self._st.count("repair_failed", res.failed)
            self._st.wake += 1
            if bp.applies(self._st.spec):
                await self._capture.collect_bypass()

    async def drain_once(self, max_seconds: float = 120, *, under_fence: bool = False,
                         tenant: str | None = None) -> RepairDrainResult:
        """Mirror what the repair queue holds right now (a one-shot drain beside the background one); under a
        write fence every entry is tried, due or not. Returns what was done and what is left (under a fence:
        per table, and how much of it belongs to the scope that flips - ``tenant``, or the whole migration)."""
        spec = await spec_or_ref(self._st, SPEC_REF_REPAIRS_PATCH)
        res: RepairDrainResult = await workflow.execute_activity(
            ActivityNames.DRAIN_REPAIRS,
            RepairDrainInput(**spec, max_idle_seconds=0, max_seconds=max_seconds, under_fence=under_fence,
                             tenant=tenant),
            start_to_close_timeout=timedelta(seconds=600),
            heartbeat_timeout=timedelta(seconds=min(30.0, max(10.0, self._st.tuning.heartbeat_timeout_seconds))),
            retry_policy=ACTIVITY_RETRY, result_type=RepairDrainResult, summary="drain repairs now")
        self._st.s.repair_queue_depth = res.remaining
        self._st.count("repair_mirrored", res.mirrored)
        self._st.count("repair_failed", res.failed)
        return res
