"""The automatic rollback triggers: during CUTOVER_READS / CUTOVER_WRITES a long-polling activity watches the
live statistics; when a threshold is crossed the workflow rolls back one step by itself and holds there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

from workflows.migration._constants import SPEC_REF_TRIGGER_WATCH_PATCH, TRIGGER_WATCH_SECONDS
from workflows.migration._specref import spec_or_ref
from workflows.migration._state import MigrationState, scope_key, who
from workflows.migration._transitions import Transitions

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.models import (
        ActivityNames,
        HoldState,
        Phase,
        TransitionRequest,
        TriggerScope,
        TriggerWatchInput,
        TriggerWatchResult,
    )
    from workflows.relay import poller_task_queue
    from workflows.retry import ACTIVITY_RETRY
    from workflows.verify import failure_message


class Monitor:
    """Watches the rollback triggers and rolls back when one trips."""

    def __init__(self, st: MigrationState, transitions: Transitions) -> None:
        self._st = st
        self._transitions = transitions

    def scopes(self) -> list[TriggerScope]:
        """What the triggers watch now: the migration and every tenant in a CUTOVER_* whose barrier passed."""
        s = self._st.s
        out: list[TriggerScope] = []
        if s.phase in phases.TRIGGERED and s.phase_work_done and s.phase_entered_at is not None:
            out.append(TriggerScope(tenant=None, phase=s.phase, since=s.phase_entered_at))
        for ts in s.tenants:
            if ts.phase in phases.TRIGGERED and ts.work_done and ts.entered_at is not None \
                    and ts.phase.rank > s.phase.rank:
                out.append(TriggerScope(tenant=ts.tenant, phase=ts.phase, since=ts.entered_at))
        return out

    def _watch_ended(self, watch: asyncio.Task[Any], key: tuple[Any, ...]) -> Callable[[], bool]:
        return lambda: watch.done() or self._key() != key or self._st.stopping

    def _key(self) -> tuple[Any, ...]:
        return (self._st.s.epoch, bool(self._st.transitioning), tuple((x.tenant, x.phase) for x in self.scopes()))

    async def loop(self) -> None:
        cfg = self._st.spec.rollback_triggers
        if not cfg.enabled:
            return
        while not self._st.stopping:
            await workflow.wait_condition(
                lambda: bool(self.scopes()) and not self._st.transitioning or self._st.stopping
                or self._st.s.phase is Phase.DONE)
            if self._st.stopping or self._st.s.phase is Phase.DONE:
                return
            key = self._key()
            spec = await spec_or_ref(self._st, SPEC_REF_TRIGGER_WATCH_PATCH)
            watch = asyncio.create_task(workflow.execute_activity(
                ActivityNames.WATCH_TRIGGERS,
                TriggerWatchInput(**spec, scopes=self.scopes(),
                                  max_seconds=max(TRIGGER_WATCH_SECONDS, cfg.check_seconds * 3)),
                start_to_close_timeout=timedelta(seconds=max(TRIGGER_WATCH_SECONDS, cfg.check_seconds * 3) + 300),
                heartbeat_timeout=self._st.short_heartbeat(),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                task_queue=poller_task_queue(workflow.info().task_queue),
                retry_policy=ACTIVITY_RETRY, result_type=TriggerWatchResult, summary="watch rollback triggers"))
            try:
                await workflow.wait_condition(self._watch_ended(watch, key))
            finally:
                if not watch.done():
                    watch.cancel()
            try:
                res = await watch
            except (ActivityError, asyncio.CancelledError) as exc:
                if self._st.stopping or self._key() != key:
                    continue
                if isinstance(exc, asyncio.CancelledError) or is_cancelled_exception(exc):
                    raise
                workflow.logger.warning("rollback trigger watch failed: %s", failure_message(exc))
                await workflow.sleep(timedelta(seconds=30))
                continue
            if res.evaluation is not None:
                self._st.s.triggers = res.evaluation
                self._st.wake += 1
            if res.tripped and self._key() == key and not self._st.stopping:
                await self._auto_rollback(res)

    async def _auto_rollback(self, res: TriggerWatchResult) -> None:
        """Roll back one step by itself, record why, and hold there until an operator releases it."""
        s = self._st.s
        why = res.evaluation.reason if res.evaluation is not None else "a rollback trigger tripped"
        req = TransitionRequest(tenant=res.tenant, reason=f"automatic rollback: {why}", by="auto-rollback")
        workflow.logger.warning("migration %s: %sautomatic rollback from %s: %s", self._st.spec.name, who(res.tenant),
                                res.phase, why)
        result = await self._transitions.rollback(req, kind="auto-rollback")
        if not result.ok:
            self._st.count("auto_rollbacks_refused")
            self._st.last_signal_rejection = f"automatic rollback refused: {result.message}"
            await workflow.sleep(timedelta(seconds=max(5.0, self._st.spec.rollback_triggers.check_seconds)))
            return
        scope = scope_key(res.tenant)
        if scope not in s.holds:
            s.holds[scope] = HoldState(by="auto-rollback", reason=f"rolled back from {res.phase}: {why}",
                                       at=workflow.now())
            phase = self._st.phase_of(res.tenant)
            self._st.record(phase, phase, "hold", "auto-rollback", "held after an automatic rollback; release it "
                            "when the cause is fixed", tenant=res.tenant)
        self._st.wake += 1
