"""Publishing the migration's state, and the write fence that comes first whenever authority moves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import ROLLBACK_KINDS, WRITE_FENCE_PATCH
from workflows.migration._repairs import RepairDrain
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from dualwrite.fence import FENCE
    from workflows import phases
    from workflows.models import ActivityNames, BarrierStatus, ControlInput
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class WriteFence:
    """Publishes (phase, epoch, overrides) and fences writes around a flip of authority."""

    def __init__(self, st: MigrationState, capture: Capture, repairs: RepairDrain) -> None:
        self._st = st
        self._capture = capture
        self._repairs = repairs

    async def publish(self) -> None:
        """Publish (phase, epoch, paused, overrides) to the control tables; applications pick it up."""
        s = self._st.s
        await workflow.execute_activity(
            ActivityNames.PUBLISH_STATE,
            ControlInput(migration=self._st.spec.name, control_store=self._st.spec.control, phase=s.phase,
                         epoch=s.epoch, paused=s.paused, overrides=self.overrides()),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._st.short_heartbeat(),
            retry_policy=ACTIVITY_RETRY, summary=f"publish {s.phase} epoch {s.epoch}")
        s.published_epoch = s.epoch

    def overrides(self) -> dict[str, Any]:
        """What applications read beside the phase: each tenant's own phase, and the fence in force."""
        out = phases.overrides_for(self._st.s.phase, self._st.tenant_phases())
        if self._st.fence is not None:
            whole, tenants = self._st.fence
            out[FENCE] = {"all": True} if whole else {"tenants": sorted(tenants)}
        return out

    def scope(self, plan: phases.Plan) -> tuple[bool, tuple[str, ...]] | None:
        """Who must be fenced for ``plan``: None when no scope's authoritative store changes."""
        if plan.tenant is not None:
            if phases.authoritative(plan.frm) == phases.authoritative(plan.to):
                return None
            return False, (plan.tenant,)
        s = self._st.s
        before, after = self._st.tenant_phases(), plan.tenants_after
        flips = phases.authoritative(s.phase) != phases.authoritative(plan.phase_after) or any(
            phases.authoritative(phases.effective_phase(s.phase, before, t))
            != phases.authoritative(phases.effective_phase(plan.phase_after, after, t))
            for t in sorted({*before, *after}))
        return (True, ()) if flips else None

    async def fence_for(self, plan: phases.Plan) -> str:
        """Before authority moves: fence the writes of the scopes that flip, wait until every live instance
        has acknowledged the fence with nothing routed before it still open, and drain the repair queue and
        the key logs. '' when the flip may go ahead (the fence stays until ``Transitions.enter`` publishes the new
        authority without it); else the fence is lifted under the old authority and the refusal returned."""
        scope = self.scope(plan)
        if scope is None or not workflow.patched(WRITE_FENCE_PATCH):
            return ""
        s = self._st.s
        who = f"tenant {plan.tenant}" if plan.tenant is not None else "the migration"
        note = self._st.note_for(plan.tenant)
        self._st.count("write_fences")
        self._st.fence = scope
        s.epoch += 1
        note(f"write fence: writes of {who} held while authority moves ({plan.frm} -> {plan.to})")
        await self.publish()
        refused = ""
        denied_losing = False
        captured_gaining = False
        try:
            wait = self._st.tuning.fence_barrier_seconds
            status = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._st.spec.name, control_store=self._st.spec.control, phase=s.phase,
                             epoch=s.epoch, max_wait_seconds=wait, poll_seconds=0.05),
                start_to_close_timeout=timedelta(seconds=wait + 60),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._st.tuning.heartbeat_timeout_seconds)),
                retry_policy=ACTIVITY_RETRY, result_type=BarrierStatus, summary=f"write fence barrier epoch {s.epoch}")
            if not status.passed:
                refused = (f"{len(status.lagging)} of {status.live_instances} live instances did not acknowledge "
                           f"the write fence (epoch {s.epoch}) within {wait:g} s ("
                           f"{', '.join(status.lagging[:5])})")
            else:
                losing = phases.authoritative(plan.frm)
                gaining = phases.authoritative(plan.to)
                if await self._capture.deny_writes(deny=[losing], allow=[], authoritative=gaining):
                    denied_losing = True
                    note(f"write fence: the {losing} store refuses writes that bypass dualwrite; draining its "
                         f"key log ({plan.frm} -> {plan.to})")
                if plan.tenant is None and await self._capture.bypass_capture(install=[phases.authoritative(plan.to)]):
                    captured_gaining = True  # raw writes to the gaining store are seen from its first write
                note(f"write fence: draining the repair queue ({plan.frm} -> {plan.to})")
                await self._repairs.drain_once(max_seconds=self._st.tuning.fence_drain_seconds, under_fence=True)
                caught = await self._capture.catch_up_logs("under the write fence", note,
                                                           max_seconds=self._st.tuning.fence_drain_seconds,
                                                           authoritative=losing)
                if caught is not None and not caught.reached:
                    errors = f" ({'; '.join(caught.errors)})" if caught.errors else ""
                    refused = (f"the key logs still hold {caught.behind} entries after {caught.seconds:.0f} s of "
                               f"mirroring under the write fence{errors}")
        except (ActivityError, ChildWorkflowError) as exc:
            if is_cancelled_exception(exc):
                raise
            refused = f"draining under the write fence failed: {failure_message(exc)}"
        if not refused:
            self._st.fence = None  # _enter publishes the new authority without it
            return ""
        self._st.fence = None
        if denied_losing:
            await self._capture.deny_writes(deny=[], allow=[phases.authoritative(plan.frm)])
        if captured_gaining:
            await self._capture.bypass_capture(remove=[phases.authoritative(plan.to)])
        s.epoch += 1
        await self.publish()
        note("")
        self._st.count("write_fences_refused")
        kind = "rollback" if plan.kind in ROLLBACK_KINDS else "advance"
        return (f"{kind} refused: {refused}; the write fence was lifted, {who} stays in {plan.frm} with the "
                f"{phases.authoritative(plan.frm)} store authoritative")
