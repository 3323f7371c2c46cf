"""Publishing the migration's state, and the write fence that comes first whenever authority moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

from workflows.migration._capture import Capture
from workflows.migration._constants import (
    FENCE_REPAIRS_PATCH,
    FENCE_REPAIRS_SCOPED_PATCH,
    ROLLBACK_KINDS,
    WRITE_FENCE_PATCH,
)
from workflows.migration._repairs import RepairDrain
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from dualwrite.fence import FENCE
    from workflows import bypass as bp
    from workflows import phases
    from workflows.models import ActivityNames, BarrierStatus, ControlInput, RepairDrainResult
    from workflows.relay import CatchUpResult
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class WriteFence:
    """Publishes (phase, epoch, overrides) and fences writes around a flip of authority."""

    def __init__(self, st: MigrationState, capture: Capture, repairs: RepairDrain) -> None:
        self._st = st
        self._capture = capture
        self._repairs = repairs
        self.overridden = ""
        """What the last :meth:`fence_for` moved past by the operator's override ('' when nothing)."""

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

    async def _level_gaining_store(self, plan: phases.Plan, note: Callable[[str], None], override: bool) -> str:
        """Under the fence, with every write routed before it finished: mirror into the gaining store what only
        the losing store holds (the losing key log, then the repair queue: a key the catch-up cannot mirror is
        queued there). '' when nothing is left; else why authority must not move.

        Authority never moves while an acknowledged write exists only on the losing side ([T2-5]): the async
        adapter's failed secondary writes, the sync strategy's and the relay's all wait in the repair queue,
        so every entry is tried now (also those deferred by backoff), and the flip is refused while any is
        left. Before this (histories without ``FENCE_REPAIRS_PATCH``) only due entries were tried, and what
        was left did not count: the old store became authoritative again without such writes, and the next
        verification rewrote the new store from it."""
        losing, gaining = phases.authoritative(plan.frm), phases.authoritative(plan.to)
        budget = self._st.tuning.fence_drain_seconds
        if not workflow.patched(FENCE_REPAIRS_PATCH):
            note(f"write fence: draining the repair queue ({plan.frm} -> {plan.to})")
            await self._repairs.drain_once(max_seconds=budget, under_fence=True)
            caught = await self._capture.catch_up_logs("under the write fence", note, max_seconds=budget,
                                                       authoritative=losing)
            return _logs_behind(caught)
        caught = await self._capture.catch_up_logs("under the write fence", note, max_seconds=budget,
                                                   authoritative=losing)
        refused = _logs_behind(caught)
        if refused:
            return refused
        note(f"write fence: draining the repair queue ({plan.frm} -> {plan.to})")
        res = await self._repairs.drain_once(max_seconds=budget, under_fence=True, tenant=plan.tenant)
        if not res.remaining:
            return ""
        if not workflow.patched(FENCE_REPAIRS_SCOPED_PATCH):
            errors = f" ({'; '.join(res.errors[:3])})" if res.errors else ""
            return (f"the repair queue still holds {res.remaining} key(s) that could not be mirrored into the "
                    f"{gaining} store under the write fence{errors}; moving authority now would lose writes "
                    f"acknowledged on the {losing} store")
        return self._stuck(plan, res, override, note)

    async def _collect_bypass(self, plan: phases.Plan, note: Callable[[str], None]) -> str:
        """Under the fence, before the repair drain: collect the writes that bypassed the adapter since the last
        collection, so their keys are queued and repaired before authority moves. '' when collected (or when
        bypass capture does not apply); else why the flip must not happen (never with uncollected bypass)."""
        if (plan.tenant is not None or not bp.applies(self._st.spec)
                or not workflow.patched(bp.FENCE_COLLECT_PATCH)):
            return ""
        s = self._st.s
        if s.bypass is None or not s.bypass.capture_on:
            return ""
        note(f"write fence: collecting writes that bypassed the adapter ({plan.frm} -> {plan.to})")
        failed = await self._capture.collect_bypass(" under the write fence")
        if not failed:
            return ""
        return (f"collecting the writes that bypassed the adapter failed under the write fence ({failed}); "
                "authority does not move while bypassed writes may be uncollected")

    def _stuck(self, plan: phases.Plan, res: RepairDrainResult, override: bool, note: Callable[[str], None]) -> str:
        """Keys left after the fence's drain: those of the scope that flips refuse the flip (unless the operator
        overrides, recorded); others wait for their own scope's flip."""
        losing, gaining = phases.authoritative(plan.frm), phases.authoritative(plan.to)
        blocking = res.remaining if res.blocking is None else res.blocking
        if not blocking:
            note(f"write fence: {res.remaining} repair key(s) of other tenants or shared tables stay queued; they do "
                 f"not flip with {who_of(plan)} ({_per_table(res, blocking_only=False)})")
            return ""
        stuck = (f"the repair queue holds {blocking} key(s) of {who_of(plan)} that could not be mirrored into the "
                 f"{gaining} store under the write fence ({_per_table(res, blocking_only=True)})")
        if override:
            self.overridden = (f"override of stuck repairs: {stuck}; their writes acknowledged on the {losing} store "
                               f"are overwritten from the {gaining} store")
            self._st.count("stuck_repairs_overridden", blocking)
            return ""
        verb = "rollback" if plan.kind in ROLLBACK_KINDS else "advance"
        return (f"{stuck}; moving authority now would lose writes acknowledged on the {losing} store. Fix what the "
                f"error says (or the row on the {gaining} store) and {verb} again: every stuck key is tried again "
                f"under the fence. To move anyway, accepting that those keys take the {gaining} store's rows, "
                f"{verb} with --override-stuck-repairs --reason TEXT (recorded in the transition)")

    async def fence_for(self, plan: phases.Plan, *, override_stuck: bool = False) -> str:
        """Before authority moves: fence the writes of the scopes that flip, wait until every live instance
        has acknowledged the fence with nothing routed before it still open, and drain the key logs and the
        repair queue (:meth:`_level_gaining_store`). '' when the flip may go ahead (the fence stays until
        ``Transitions.enter`` publishes the new authority without it); else the fence is lifted under the old
        authority and the refusal returned. ``override_stuck``: the operator's recorded override of repair keys
        that cannot be mirrored (:attr:`overridden` then says what was overridden, for the transition)."""
        self.overridden = ""
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
        refusing_old = False
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
                if plan.tenant is None and gaining == "new":
                    refusing_old = True  # lifted again if the flip is refused (also clears a "cannot" note)
                    if await self._capture.refuse_old(True):  # no raw write lands on the old store uncollected
                        note("write fence: the old store refuses writes that bypass the adapter")
                if plan.tenant is None and await self._capture.bypass_capture(install=[phases.authoritative(plan.to)]):
                    captured_gaining = True  # raw writes to the gaining store are seen from its first write
                refused = await self._collect_bypass(plan, note)
                refused = refused or await self._level_gaining_store(plan, note, override_stuck)
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
        if refusing_old:  # forced: an install that failed half way is lifted too
            await self._capture.refuse_old(False, force=True)
        s.epoch += 1
        await self.publish()
        note("")
        self._st.count("write_fences_refused")
        kind = "rollback" if plan.kind in ROLLBACK_KINDS else "advance"
        return (f"{kind} refused: {refused}; the write fence was lifted, {who} stays in {plan.frm} with the "
                f"{phases.authoritative(plan.frm)} store authoritative")


def _logs_behind(caught: CatchUpResult | None) -> str:
    """Why the flip must wait for the key logs ('' when they were mirrored up to the drain point)."""
    if caught is None or caught.reached:
        return ""
    errors = f" ({'; '.join(caught.errors)})" if caught.errors else ""
    return (f"the key logs still hold {caught.behind} entries after {caught.seconds:.0f} s of mirroring under the "
            f"write fence{errors}")


def who_of(plan: phases.Plan) -> str:
    return f"tenant {plan.tenant}" if plan.tenant is not None else "the migration"


def _per_table(res: RepairDrainResult, *, blocking_only: bool) -> str:
    """'table T: N key(s) after A attempt(s), last error: E; ...' (counts and error texts, never keys)."""
    parts = []
    for s in res.stuck:
        n = s.blocking if blocking_only else s.keys - s.blocking
        if n <= 0:
            continue
        error = f", last error: {s.error}" if s.error else ""
        parts.append(f"table {s.table}: {n} key(s) after {s.attempts} attempt(s){error}")
    if not parts:  # an older worker: no breakdown, only the drain's errors
        return "; ".join(res.errors[:3]) or "no error reported"
    return "; ".join(parts)
