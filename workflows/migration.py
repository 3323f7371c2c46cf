"""MigrationWorkflow: one per migration (id ``dualwrite-<name>``), the phase machine of DESIGN.md.

PREPARE -> DUAL_WRITE -> BACKFILL -> SHADOW_READ -> CUTOVER_READS -> CUTOVER_WRITES -> CLEANUP -> DONE.

How a phase change happens (always under one lock, so transitions never interleave):

1. the update *validator* applies the pure rules of :mod:`workflows.phases`; an illegal request is
   rejected with its reason and writes nothing to history;
2. a gated transition (into CUTOVER_READS, CUTOVER_WRITES, CLEANUP) evaluates its gate through an
   activity, and the decision with its evidence lands in history; a forced advance records its reason;
3. a rollback out of CUTOVER_WRITES first verifies new -> old and repairs, so the old store holds every
   acknowledged write before it becomes authoritative again;
4. the epoch grows, (phase, epoch) is published to the control tables, and the phase's *entry work*
   starts: wait for the phase barrier (every live application instance has seen the epoch), then the
   phase's own work (preflight, backfill children then a verification, or a verification).

Operators drive it with updates (CLI) or the same-named ``*_signal`` signals (Web UI). In auto mode the
workflow advances by itself once a phase's work is done and its gate passes, and always holds before
CLEANUP unless the spec sets ``auto_cleanup``. Alongside, a repair drain mirrors keys of failed secondary
writes from the durable queue in the control store, and a continuous verification runs with jitter from
DUAL_WRITE until CLEANUP when ``verify_interval_seconds`` is set.

Only names, counts, key bounds and checkpoints enter history; activities resolve store names to URLs in
the worker. The workflow continues as new when Temporal suggests it and nothing long is running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.backfill import PERMANENT_ERRORS, PROGRESS_SIGNAL, BackfillWorkflow
    from workflows.models import (
        BACKFILL_PERCENT,
        MIGRATION_PHASE,
        ActivityNames,
        BackfillInput,
        BackfillProgress,
        BackfillResult,
        BarrierStatus,
        ControlInput,
        GateInput,
        GateResult,
        MigrationCarry,
        MigrationInput,
        MigrationStatus,
        PauseState,
        Phase,
        PrepareInput,
        PrepareResult,
        RepairDrainInput,
        RepairDrainResult,
        TableProgress,
        TableRef,
        TransitionRecord,
        TransitionRequest,
        TransitionResult,
        VerificationSummary,
        VerifyInput,
    )
    from workflows.verify import VerificationWorkflow, failure_message

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                     maximum_interval=timedelta(seconds=60), non_retryable_error_types=PERMANENT_ERRORS)

MAX_TRANSITIONS_KEPT = 200


def _reject(reason: str) -> ApplicationError:
    return ApplicationError(reason, type="IllegalTransition", non_retryable=True)


@workflow.defn
class MigrationWorkflow:
    """The migration's phase machine and the source of truth for its state."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        self._spec = inp.spec
        self._tuning = inp.tuning
        self._s: MigrationCarry = inp.carry.model_copy(deep=True) if inp.carry else MigrationCarry(
            started_by=inp.started_by,
            tables=[TableProgress(source=t.source, target=t.target_table) for t in inp.spec.tables])
        self._lock = asyncio.Lock()
        self._transitioning = ""
        self._work: asyncio.Task[None] | None = None
        self._verify: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._drain_stop = False
        self._fatal: BaseException | None = None
        self._wake = 0
        self._gate_dirty = True
        self._gate_checked_at: Any = None
        self._last_signal_rejection = ""
        self._backfill_children: list[str] = []

    # =====================================================================================================
    # run

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        s = self._s
        if inp.carry is None:
            s.epoch = 1
            s.phase_entered_at = workflow.now()
            s.transitions.append(TransitionRecord(from_phase=Phase.PREPARE, to_phase=Phase.PREPARE,
                                                  at=workflow.now(), by=inp.started_by, reason="started",
                                                  kind="start"))
            workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(Phase.PREPARE.value),
                                               BACKFILL_PERCENT.value_set(0)])
            # PREPARE's work checks the spec against the stores *before* anything is written, then publishes
            self._start_work()
        elif not s.phase_work_done:
            self._start_work()
        self._drain = asyncio.create_task(self._drain_loop())
        self._render()
        while True:
            if self._fatal is not None:
                await self._stop_background()
                raise self._fatal
            if s.phase is Phase.DONE and s.phase_work_done:
                break
            await self._maybe_auto_advance()
            self._maybe_start_verification()
            if self._idle() and workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new(inp)
            self._render()
            seen = self._wake
            timeout = self._next_timeout()
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._changed_since(seen), timeout=timeout)
        await self._stop_background()
        self._render()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _changed_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._wake != seen or self._fatal is not None

    def _idle(self) -> bool:
        return (not self._transitioning and not self._lock.locked()
                and (self._work is None or self._work.done())
                and (self._verify is None or self._verify.done()))

    async def _continue_as_new(self, inp: MigrationInput) -> None:
        """Continue as new if still idle once handlers and the drain have stopped; else try later."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._idle():
            return
        await self._stop_background()
        if not (self._idle() and workflow.all_handlers_finished()):
            # an operator started something meanwhile: keep this run going, drain included
            self._drain_stop = False
            self._drain = asyncio.create_task(self._drain_loop())
            return
        self._s.runs += 1
        self._count("continued_as_new")
        workflow.continue_as_new(MigrationInput(spec=self._spec, started_by=self._s.started_by,
                                                tuning=self._tuning, carry=self._s))

    async def _stop_background(self) -> None:
        """Stop the repair drain and wait until its activity has returned (its counts are kept)."""
        self._drain_stop = True
        if self._drain is not None:
            await _cancel(self._drain)
        self._drain = None

    def _next_timeout(self) -> timedelta | None:
        """The next moment something is due without a wake-up: a continuous verification, a gate recheck."""
        s = self._s
        waits: list[float] = []
        # only timers that can act when they fire: a verification blocked by phase work, a pause or a
        # running verification is started by the wake-up that unblocks it, not by polling
        if (s.next_verify_at is not None and self._verification_allowed() and not s.paused
                and s.phase_work_done and self._idle()):
            waits.append((s.next_verify_at - workflow.now()).total_seconds())
        if (self._spec.mode.value == "auto" and self._gate_checked_at is not None and s.gate is not None
                and not s.gate.get("passed")):
            waits.append(self._tuning.gate_recheck_seconds
                         - (workflow.now() - self._gate_checked_at).total_seconds())
        if not waits:
            return None
        return timedelta(seconds=max(1.0, min(waits)))

    # =====================================================================================================
    # operator interface: updates (validated, answered) and the same as signals (for the Web UI)

    def view(self) -> phases.MachineView:
        s = self._s
        return phases.MachineView(
            phase=s.phase, paused=s.paused, auto=self._spec.mode.value == "auto",
            auto_cleanup=self._spec.auto_cleanup, require_approval=self._spec.gates.require_approval,
            transitioning=self._transitioning, work_done=s.phase_work_done, work_state=s.work_state,
            verifying=self._verify is not None and not self._verify.done(),
            approved_for=s.approved_for)

    @workflow.update(description="Advance to the next phase (gated into CUTOVER_* and CLEANUP). "
                                 "{to?, reason, by, force, dry_run}")
    async def advance(self, req: TransitionRequest) -> TransitionResult:
        return await self._advance(req, kind="advance")

    @advance.validator
    def _validate_advance(self, req: TransitionRequest) -> None:
        self._check(phases.resolve_advance, req)

    @workflow.update(description="Roll back to an earlier phase (default: the previous one); old store "
                                 "authoritative again, no row lost. Needs a reason. {to?, reason, by}")
    async def rollback(self, req: TransitionRequest) -> TransitionResult:
        return await self._rollback(req)

    @rollback.validator
    def _validate_rollback(self, req: TransitionRequest) -> None:
        self._check(phases.resolve_rollback, req)

    @workflow.update(description="Pause: no transitions, no new backfill ranges, no scheduled "
                                 "verification. {reason, by}")
    async def pause(self, req: TransitionRequest) -> TransitionResult:
        return await self._pause(req, paused=True)

    @pause.validator
    def _validate_pause(self, req: TransitionRequest) -> None:
        self._check(phases.check_pause, req)

    @workflow.update(description="Resume a paused migration. {reason, by}")
    async def resume(self, req: TransitionRequest) -> TransitionResult:
        return await self._pause(req, paused=False)

    @resume.validator
    def _validate_resume(self, req: TransitionRequest) -> None:
        self._check(phases.check_resume, req)

    @workflow.update(description="Approve the next gated transition (or, in auto mode, entering "
                                 "CLEANUP). {to?, reason, by}")
    async def approve(self, req: TransitionRequest) -> TransitionResult:
        return await self._approve(req)

    @approve.validator
    def _validate_approve(self, req: TransitionRequest) -> None:
        self._check(phases.resolve_approve, req)

    @workflow.update(description="Run a verification now (compare, repair, re-verify). {reason, by}")
    async def verify(self, req: TransitionRequest) -> TransitionResult:
        return await self._request_verify(req)

    @verify.validator
    def _validate_verify(self, req: TransitionRequest) -> None:
        self._check(phases.check_verify, req)

    def _check(self, rule: Any, req: TransitionRequest) -> None:
        try:
            rule(self.view(), req)
        except phases.Rejected as exc:
            raise _reject(str(exc)) from None

    def _signal_ok(self, rule: Any, req: TransitionRequest, name: str) -> bool:
        """Signals cannot be refused: a rejected one is logged and shown in the details instead."""
        try:
            rule(self.view(), req)
        except phases.Rejected as exc:
            self._last_signal_rejection = f"{name} by {req.by or '?'} rejected: {exc}"
            self._count("signals_rejected")
            workflow.logger.warning("signal %s rejected: %s", name, exc)
            self._wake += 1
            return False
        return True

    @workflow.signal(name="advance_signal", description="Same as the advance update (for the Web UI).")
    async def advance_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.resolve_advance, req, "advance"):
            await self._advance(req, kind="advance")

    @workflow.signal(name="rollback_signal", description="Same as the rollback update (for the Web UI).")
    async def rollback_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.resolve_rollback, req, "rollback"):
            await self._rollback(req)

    @workflow.signal(name="pause_signal", description="Same as the pause update (for the Web UI).")
    async def pause_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.check_pause, req, "pause"):
            await self._pause(req, paused=True)

    @workflow.signal(name="resume_signal", description="Same as the resume update (for the Web UI).")
    async def resume_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.check_resume, req, "resume"):
            await self._pause(req, paused=False)

    @workflow.signal(name="approve_signal", description="Same as the approve update (for the Web UI).")
    async def approve_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.resolve_approve, req, "approve"):
            await self._approve(req)

    @workflow.signal(name="verify_signal", description="Same as the verify update (for the Web UI).")
    async def verify_signal(self, req: TransitionRequest) -> None:
        if self._signal_ok(phases.check_verify, req, "verify"):
            await self._request_verify(req)

    @workflow.signal(name=PROGRESS_SIGNAL, description="Internal: backfill progress from a child.")
    def backfill_progress(self, p: BackfillProgress) -> None:
        if self._s.phase is not Phase.BACKFILL or self._s.phase_work_done:
            return
        for t in self._s.tables:
            if t.source == p.source:
                t.rows_copied, t.rows_estimate = p.rows_copied, p.rows_estimate
                t.ranges_done, t.ranges_total, t.eta_seconds = p.ranges_done, p.ranges_total, p.eta_seconds
                t.done = p.done
                t.percent = 100 if p.done else min(99, int(100 * p.rows_copied / max(p.rows_estimate, 1)))
        self._upsert_backfill_percent()
        self._wake += 1

    @workflow.query(description="The full status: phase, per-table progress, counters, last "
                                "verification, gate evidence, transitions, repair queue depth.")
    def status(self) -> MigrationStatus:
        s = self._s
        return MigrationStatus(
            name=self._spec.name, phase=s.phase, paused=s.paused, mode=self._spec.mode.value,
            strategy=self._spec.strategy.value, epoch=s.epoch, tables=[t.model_copy() for t in s.tables],
            counters=dict(s.counters), last_verification=s.last_verification, gate=s.gate,
            transitions=list(s.transitions), repair_queue_depth=s.repair_queue_depth,
            waiting_for=self._waiting_for())

    # =====================================================================================================
    # transitions

    async def _advance(self, req: TransitionRequest, *, kind: str) -> TransitionResult:
        async with self._lock:
            s = self._s
            try:
                to = phases.resolve_advance(self.view(), req)
            except phases.Rejected as exc:
                return self._result(False, str(exc))
            label = f"{s.phase} -> {to}"
            self._transitioning = label
            try:
                gate: GateResult | None = None
                if to in phases.GATED or phases.approval_needed(self.view(), to):
                    self._transitioning = f"{label} (evaluating the gate)"
                    gate = await self._evaluate_gate(to)
                    self._transitioning = label
                    if not gate.passed and not req.force:
                        return self._result(False, f"the gate into {to} did not pass: " + "; ".join(gate.reasons))
                if req.dry_run:
                    note = "" if gate is None or gate.passed else " (forced past a failing gate)"
                    return self._result(True, f"dry run: {label} would be accepted{note}")
                if gate is not None and not gate.passed:
                    kind = "force"
                    self._count("forced_transitions")
                return await self._enter(to, kind=kind, by=req.by, reason=req.reason)
            finally:
                self._transitioning = ""

    async def _rollback(self, req: TransitionRequest) -> TransitionResult:
        async with self._lock:
            s = self._s
            try:
                to = phases.resolve_rollback(self.view(), req)
            except phases.Rejected as exc:
                return self._result(False, str(exc))
            if req.dry_run:
                extra = " after verifying new -> old" if s.phase is Phase.CUTOVER_WRITES else ""
                return self._result(True, f"dry run: rollback {s.phase} -> {to} would be accepted{extra}")
            self._transitioning = f"rollback {s.phase} -> {to}"
            try:
                was_done = s.phase_work_done
                await self._cancel_work()
                if phases.authoritative(s.phase) == "new" and phases.authoritative(to) == "old":
                    # The old store becomes authoritative again: first make it hold every write the new
                    # store acknowledged (the drain catches up queued keys; then verify and repair).
                    self._s.work_state = "rollback: verifying new -> old before flipping"
                    try:
                        summary = await self._run_verification(reverse=True, repair=True, reason="rollback")
                    except (ActivityError, ChildWorkflowError) as exc:
                        if is_cancelled_exception(exc):
                            raise
                        summary = VerificationSummary(at=workflow.now(), ok=False, rows_compared=0,
                                                      direction="new->old")
                        self._s.work_state = f"rollback verification failed: {failure_message(exc)}"
                    if not summary.ok:
                        self._s.work_state = ""
                        if not was_done:
                            self._start_work()
                        return self._result(False, "rollback refused: the old store could not be brought "
                                                   "level with the new one (" + _verification_text(summary)
                                                   + "); the migration stays in " + s.phase.value)
                self._count("rollbacks")
                return await self._enter(to, kind="rollback", by=req.by, reason=req.reason)
            finally:
                self._transitioning = ""

    async def _pause(self, req: TransitionRequest, *, paused: bool) -> TransitionResult:
        async with self._lock:
            s = self._s
            rule = phases.check_pause if paused else phases.check_resume
            try:
                rule(self.view(), req)
            except phases.Rejected as exc:
                return self._result(False, str(exc))
            if req.dry_run:
                return self._result(True, f"dry run: {'pause' if paused else 'resume'} would be accepted")
            s.paused = paused
            self._record(s.phase, s.phase, "pause" if paused else "resume", req.by, req.reason)
            await self._publish()
            for child in self._backfill_children:
                with contextlib.suppress(Exception):  # a finished child needs no pause
                    await workflow.get_external_workflow_handle(child).signal("set_paused", PauseState(paused=paused))
            if not paused and s.next_verify_at is not None and s.next_verify_at < workflow.now():
                self._schedule_verification()
            self._gate_dirty = True
            self._wake += 1
            return self._result(True, f"{'paused' if paused else 'resumed'} in {s.phase}")

    async def _approve(self, req: TransitionRequest) -> TransitionResult:
        s = self._s
        try:
            to = phases.resolve_approve(self.view(), req)
        except phases.Rejected as exc:
            return self._result(False, str(exc))
        if req.dry_run:
            return self._result(True, f"dry run: approving {s.phase} -> {to} would be accepted")
        s.approved_for = to
        self._record(s.phase, s.phase, "approve", req.by, req.reason or f"approved {s.phase} -> {to}")
        self._gate_dirty = True
        self._wake += 1
        return self._result(True, f"approved {s.phase} -> {to}")

    async def _request_verify(self, req: TransitionRequest) -> TransitionResult:
        try:
            phases.check_verify(self.view(), req)
        except phases.Rejected as exc:
            return self._result(False, str(exc))
        if req.dry_run:
            return self._result(True, "dry run: a verification would start")
        self._s.verify_requested = True
        self._count("verifications_requested")
        self._wake += 1
        return self._result(True, "verification requested" + (
            "; it starts when the current phase work is done" if not self._s.phase_work_done else ""))

    async def _enter(self, to: Phase, *, kind: str, by: str, reason: str) -> TransitionResult:
        """Carry out a phase change (the caller holds the lock and has checked the rules and gate)."""
        s = self._s
        frm = s.phase
        self._transitioning = self._transitioning or f"{frm} -> {to}"
        try:
            await self._cancel_work()
            s.epoch += 1
            s.phase = to
            s.phase_entered_at = workflow.now()
            s.phase_work_done = False
            s.approved_for = None
            s.work_state = "publishing"
            if to.rank <= Phase.BACKFILL.rank:
                s.backfill_done = False
            if to is Phase.BACKFILL:
                for t in s.tables:
                    t.rows_copied, t.percent, t.ranges_done, t.done, t.eta_seconds = 0, 0, 0, False, None
                s.backfill_percent_step = 0
                workflow.upsert_search_attributes([BACKFILL_PERCENT.value_set(0)])
            self._record(frm, to, kind, by, reason)
            workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(to.value)])
            if phases.continuous_verification(to) and self._spec.verify_interval_seconds > 0:
                if s.next_verify_at is None:
                    self._schedule_verification()
            else:
                s.next_verify_at = None
            await self._publish()
            self._start_work()
            self._gate_dirty = True
            self._wake += 1
            return self._result(True, f"{frm} -> {to} (epoch {s.epoch}); waiting for the phase barrier")
        finally:
            if self._transitioning == f"{frm} -> {to}":
                self._transitioning = ""

    def _record(self, frm: Phase, to: Phase, kind: str, by: str, reason: str) -> None:
        s = self._s
        s.transitions.append(TransitionRecord(from_phase=frm, to_phase=to, at=workflow.now(), by=by,
                                              reason=reason, kind=kind))
        del s.transitions[:-MAX_TRANSITIONS_KEPT]
        workflow.logger.info("migration %s: %s %s -> %s by %s: %s", self._spec.name, kind, frm, to,
                             by or "?", reason)

    def _result(self, ok: bool, message: str) -> TransitionResult:
        return TransitionResult(ok=ok, phase=self._s.phase, epoch=self._s.epoch, message=message)

    async def _publish(self) -> None:
        s = self._s
        await workflow.execute_activity(
            ActivityNames.PUBLISH_STATE,
            ControlInput(migration=self._spec.name, control_store=self._spec.control, phase=s.phase,
                         epoch=s.epoch, paused=s.paused),
            start_to_close_timeout=timedelta(minutes=2), retry_policy=_RETRY,
            summary=f"publish {s.phase} epoch {s.epoch}")
        s.published_epoch = s.epoch

    async def _evaluate_gate(self, to: Phase) -> GateResult:
        s = self._s
        percent = 100 if s.backfill_done else min((t.percent for t in s.tables), default=0)
        result: GateResult = await workflow.execute_activity(
            ActivityNames.EVALUATE_GATE,
            GateInput(spec=self._spec, phase=s.phase, to=to, backfill_percent=percent,
                      backfill_done=s.backfill_done, last_verification=s.last_verification,
                      phase_entered_at=s.phase_entered_at, repair_queue_depth=s.repair_queue_depth,
                      approved=s.approved_for is to),
            start_to_close_timeout=timedelta(minutes=2), retry_policy=_RETRY, result_type=GateResult,
            summary=f"gate {s.phase} -> {to}")
        s.gate = result.model_dump(mode="json")
        self._count("gate_evaluations")
        self._gate_dirty = False
        self._gate_checked_at = workflow.now()
        return result

    async def _maybe_auto_advance(self) -> None:
        if self._spec.mode.value != "auto" or self._lock.locked():
            return
        to, _why = phases.auto_target(self.view())
        if to is None:
            return
        if to in phases.GATED:
            due = self._gate_dirty or self._gate_checked_at is None or (
                workflow.now() - self._gate_checked_at).total_seconds() >= self._tuning.gate_recheck_seconds
            if not due:
                return
        await self._advance(TransitionRequest(to=to, by="auto", reason="phase work done, gate passed"),
                            kind="auto")

    # =====================================================================================================
    # phase entry work

    def _start_work(self) -> None:
        self._work = asyncio.create_task(self._phase_work(self._s.phase, self._s.epoch))

    async def _cancel_work(self) -> None:
        for task in (self._work, self._verify):
            if task is not None:
                await _cancel(task)
        self._work = None
        self._verify = None
        self._backfill_children = []

    async def _phase_work(self, phase: Phase, epoch: int) -> None:
        s = self._s
        try:
            if phase is Phase.PREPARE:
                s.work_state = "preflight"
                self._wake += 1
                prep = await workflow.execute_activity(
                    ActivityNames.PREPARE, PrepareInput(spec=self._spec),
                    start_to_close_timeout=timedelta(minutes=10), retry_policy=_RETRY,
                    result_type=PrepareResult, summary="preflight")
                for t in s.tables:
                    for p in prep.tables:
                        if p.source == t.source:
                            t.rows_estimate = p.rows_estimate
            if s.published_epoch < epoch:
                await self._publish()
            await self._barrier(epoch)
            if phase is Phase.BACKFILL:
                await self._backfill()
                s.work_state = "verifying after backfill"
                self._wake += 1
                await self._run_verification(reverse=False, repair=True, reason="after backfill")
                s.backfill_done = True
            elif phase in (Phase.SHADOW_READ, Phase.CUTOVER_READS, Phase.CUTOVER_WRITES):
                s.work_state = f"verifying on entering {phase}"
                self._wake += 1
                await self._run_verification(reverse=phases.verification_reverse(phase), repair=True,
                                             reason=f"entering {phase}")
            s.phase_work_done = True
            s.work_state = ""
        except (ActivityError, ChildWorkflowError, ApplicationError) as exc:
            if is_cancelled_exception(exc):
                raise
            msg = failure_message(exc)
            s.work_state = (f"{phase} work failed: {msg}; fix the cause, then roll back and advance again "
                            "to retry")
            self._count("phase_work_failures")
            workflow.logger.error("migration %s: %s work failed: %s", self._spec.name, phase, msg)
            if phase is Phase.PREPARE and epoch == 1:
                self._fatal = ApplicationError(f"PREPARE failed: {msg}", type="PreflightFailed",
                                               non_retryable=True)
        finally:
            self._gate_dirty = True
            self._wake += 1

    async def _barrier(self, epoch: int) -> None:
        s = self._s
        s.work_state = f"barrier: waiting for live instances to see epoch {epoch}"
        while True:
            status = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._spec.name, control_store=self._spec.control, phase=s.phase,
                             epoch=epoch, max_wait_seconds=self._tuning.barrier_poll_seconds),
                start_to_close_timeout=timedelta(seconds=self._tuning.barrier_poll_seconds + 120),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._tuning.heartbeat_timeout_seconds)),
                retry_policy=_RETRY, result_type=BarrierStatus, summary=f"barrier epoch {epoch}")
            if status.passed:
                self._count("barriers_passed")
                return
            s.work_state = (f"barrier: {len(status.lagging)} of {status.live_instances} live instances have "
                            f"not seen epoch {epoch} ({', '.join(status.lagging[:5])})")
            self._wake += 1

    async def _backfill(self) -> None:
        s = self._s
        s.backfill_runs += 1
        run = s.backfill_runs
        wid = workflow.info().workflow_id
        s.work_state = "backfill: planning ranges"
        self._wake += 1
        handles = []
        self._backfill_children = []
        for t in self._spec.tables:
            child_id = f"{wid}-backfill-{t.source}-{run}"
            handle = await workflow.start_child_workflow(
                BackfillWorkflow.run,
                BackfillInput(table=TableRef(spec=self._spec, source=t.source),
                              concurrency=self._spec.backfill_concurrency, ranges=self._tuning.backfill_ranges,
                              tuning=self._tuning),
                id=child_id, static_summary=f"backfill {t.source} → {t.target_table} ({self._spec.old} → "
                                            f"{self._spec.new})",
            )
            self._backfill_children.append(child_id)
            handles.append(handle)
        if s.paused:
            for child in self._backfill_children:
                await workflow.get_external_workflow_handle(child).signal("set_paused", PauseState(paused=True))
        s.work_state = f"backfill: copying {len(handles)} tables"
        self._wake += 1
        results: list[BackfillResult] = list(await asyncio.gather(*handles))
        for r in results:
            for tp in s.tables:
                if tp.source == r.source:
                    tp.rows_copied, tp.rows_estimate, tp.done, tp.percent = r.rows, r.rows_estimate, True, 100
                    tp.ranges_done = tp.ranges_total = r.ranges
                    tp.eta_seconds = 0.0
            self._count("rows_copied", r.rows)
            self._count("backfill_batches", r.batches)
            self._count("backfill_redone_batches", r.redone_batches)
            self._count("backfill_resumed_ranges", r.resumed_ranges)
            self._count("backfill_continued_as_new", r.continued_as_new)
        self._backfill_children = []
        self._upsert_backfill_percent(force=100)

    def _upsert_backfill_percent(self, force: int | None = None) -> None:
        s = self._s
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

    # =====================================================================================================
    # verification

    def _verification_allowed(self) -> bool:
        return phases.continuous_verification(self._s.phase)

    def _schedule_verification(self) -> None:
        interval = float(self._spec.verify_interval_seconds)
        if interval <= 0:
            self._s.next_verify_at = None
            return
        jitter = 0.8 + 0.4 * workflow.random().random()
        self._s.next_verify_at = workflow.now() + timedelta(seconds=interval * jitter)

    def _maybe_start_verification(self) -> None:
        s = self._s
        if self._verify is not None and not self._verify.done():
            return
        if not self._idle() or not s.phase_work_done or not self._verification_allowed():
            return
        due = s.next_verify_at is not None and s.next_verify_at <= workflow.now() and not s.paused
        if not (s.verify_requested or due):
            return
        on_demand = s.verify_requested
        s.verify_requested = False
        if due:
            self._schedule_verification()
        reason = "on demand" if on_demand else "continuous"
        # before the backfill completes the new store is partial: compare only, do not "repair" it full
        repair = s.backfill_done or s.phase.rank > Phase.BACKFILL.rank
        self._verify = asyncio.create_task(self._verification_task(repair, reason))

    async def _verification_task(self, repair: bool, reason: str) -> None:
        try:
            await self._run_verification(reverse=phases.verification_reverse(self._s.phase), repair=repair,
                                         reason=reason)
        except (ActivityError, ChildWorkflowError) as exc:
            if is_cancelled_exception(exc):
                raise
            self._s.work_state = f"verification failed: {failure_message(exc)}"
        finally:
            self._gate_dirty = True
            self._wake += 1

    async def _run_verification(self, *, reverse: bool, repair: bool, reason: str) -> VerificationSummary:
        s = self._s
        s.verify_runs += 1
        direction = "new->old" if reverse else "old->new"
        summary: VerificationSummary = await workflow.execute_child_workflow(
            VerificationWorkflow.run,
            VerifyInput(spec=self._spec, reverse=reverse, repair=repair, reason=reason, tuning=self._tuning),
            id=f"{workflow.info().workflow_id}-verify-{s.verify_runs}",
            static_summary=f"verify {self._spec.name} {direction} ({reason})",
        )
        s.last_verification = summary
        self._count("verifications")
        self._count("rows_verified", summary.rows_compared)
        self._count("rows_repaired", summary.repaired)
        if not summary.ok:
            self._count("verification_failures")
        self._gate_dirty = True
        self._wake += 1
        return summary

    # =====================================================================================================
    # repair drain

    async def _drain_loop(self) -> None:
        """Mirror keys of failed secondary writes while applications mirror (DUAL_WRITE..CUTOVER_WRITES),
        and until the queue is empty afterwards."""
        s = self._s
        while not self._drain_stop:
            if not (phases.secondary_is_mirrored(s.phase) or s.repair_queue_depth > 0):
                await workflow.wait_condition(
                    lambda: phases.secondary_is_mirrored(s.phase) or s.phase is Phase.DONE)
                if s.phase is Phase.DONE:
                    return
                continue
            try:
                # Cancelling waits for the activity to stop: it notices at its next heartbeat and returns
                # what it mirrored so far, so two drains never overlap across continue-as-new.
                res = await workflow.execute_activity(
                    ActivityNames.DRAIN_REPAIRS,
                    RepairDrainInput(spec=self._spec, max_idle_seconds=self._tuning.repair_idle_seconds),
                    start_to_close_timeout=timedelta(seconds=self._tuning.repair_idle_seconds + 600),
                    heartbeat_timeout=timedelta(seconds=min(10.0, self._tuning.heartbeat_timeout_seconds)),
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    retry_policy=_RETRY, result_type=RepairDrainResult, summary="repair drain")
            except ActivityError as exc:
                if is_cancelled_exception(exc) or self._drain_stop:
                    return
                workflow.logger.warning("repair drain failed: %s", failure_message(exc))
                await workflow.sleep(timedelta(seconds=30))
                continue
            if s.repair_queue_depth != res.remaining:
                self._gate_dirty = True
            s.repair_queue_depth = res.remaining
            self._count("repair_mirrored", res.mirrored)
            self._count("repair_failed", res.failed)
            self._wake += 1

    # =====================================================================================================
    # presentation

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self._s.counters[name] = self._s.counters.get(name, 0) + n

    def _waiting_for(self) -> str:
        s = self._s
        if self._fatal is not None:
            return f"nothing: failed ({self._fatal})"
        if s.phase is Phase.DONE and s.phase_work_done:
            return ""
        if self._transitioning:
            return f"transition: {self._transitioning}"
        if not s.phase_work_done:
            return s.work_state or f"{s.phase} work"
        note = " (a verification is running)" if self._verify is not None and not self._verify.done() else ""
        to, why = phases.auto_target(self.view())
        if to is not None and s.gate and not s.gate.get("passed") and s.gate.get("to") == to.value:
            return "gate: " + "; ".join(s.gate.get("reasons") or []) + note
        if to is not None:
            return f"auto: advancing to {to}{note}"
        return why + note

    def _render(self) -> None:
        s = self._s
        lines = [f"**{self._spec.name}**: {self._spec.old} → {self._spec.new} · phase **{s.phase}** "
                 f"(epoch {s.epoch}){' · **PAUSED**' if s.paused else ''} · {self._spec.mode.value} mode",
                 "", f"waiting for: {self._waiting_for() or '–'}", "",
                 "| table | rows copied | estimate | % | ranges | ETA |", "|---|---:|---:|---:|---:|---:|"]
        for t in s.tables:
            eta = "–" if t.eta_seconds is None else f"{t.eta_seconds:.0f} s"
            lines.append(f"| {t.source} → {t.target} | {t.rows_copied:,} | {t.rows_estimate:,} | {t.percent} | "
                         f"{t.ranges_done}/{t.ranges_total} | {eta} |")
        v = s.last_verification
        if v is not None:
            lines += ["", f"last verification {v.direction} at {v.at:%Y-%m-%d %H:%M:%S}Z: "
                          f"{'clean' if v.ok else 'NOT clean'}, {v.rows_compared:,} rows, "
                          f"missing {v.missing}, extra {v.extra}, field-different {v.field_different}, "
                          f"repaired {v.repaired}"]
        lines += ["", f"repair queue: {s.repair_queue_depth}"]
        if self._last_signal_rejection:
            lines += ["", f"⚠ {self._last_signal_rejection}"]
        workflow.set_current_details("\n".join(lines))


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait until its activity / child has been told."""
    if task.done():
        return
    task.cancel()
    try:
        await task
    except BaseException as exc:  # noqa: BLE001
        if not is_cancelled_exception(exc):
            workflow.logger.warning("background task ended with %s while cancelled", type(exc).__name__)


def _verification_text(v: VerificationSummary) -> str:
    errors = "; ".join(f"{t.source}: {t.error}" for t in v.tables if t.error)
    return (f"{v.direction}: {v.rows_compared} rows compared, missing {v.missing}, extra {v.extra}, "
            f"field-different {v.field_different}" + (f"; {errors}" if errors else ""))
