"""The migration workflow itself: its run loop, and the updates, signals and query operators reach it by."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.migration._abort import Abort
from workflows.migration._capture import Capture
from workflows.migration._constants import NO_PROGRESS_UPSERT_PATCH, PROGRESS_UPSERT_PATCH
from workflows.migration._fence import WriteFence
from workflows.migration._gates import Gates
from workflows.migration._monitor import Monitor
from workflows.migration._render import Rendering
from workflows.migration._repairs import RepairDrain
from workflows.migration._requests import Requests
from workflows.migration._state import MigrationState, cancel_task, reject
from workflows.migration._transitions import Transitions
from workflows.migration._verification import Verifications
from workflows.migration._work import PhaseWork

with workflow.unsafe.imports_passed_through():
    from workflows import phases
    from workflows.backfill import PROGRESS_SIGNAL
    from workflows.models import (
        BACKFILL_PERCENT,
        MIGRATION_PHASE,
        BackfillProgress,
        MigrationInput,
        MigrationStatus,
        Phase,
        TransitionRecord,
        TransitionRequest,
        TransitionResult,
    )


@workflow.defn
class MigrationWorkflow:
    """The migration's phase machine and the source of truth for its state: the run loop and the operator
    interface; the work is done by the collaborators it wires to one :class:`MigrationState`."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        st = self._st = MigrationState(inp)
        self._capture = Capture(st)
        self._repairs = RepairDrain(st, self._capture)
        self._fencing = WriteFence(st, self._capture, self._repairs)
        self._verifications = Verifications(st)
        self._entry = PhaseWork(st, self._capture, self._repairs, self._fencing, self._verifications)
        self._gates = Gates(st, self._capture, self._verifications)
        self._transitions = Transitions(st, self._capture, self._repairs, self._fencing, self._verifications,
                                        self._entry, self._gates)
        self._requests = Requests(st, self._fencing, self._verifications)
        self._aborter = Abort(st, self._capture, self._fencing, self._entry, self._transitions)
        self._monitoring = Monitor(st, self._transitions)
        self._rendering = Rendering(st)

    # =====================================================================================================
    # run

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        self._st.progress_in_loop = workflow.patched(PROGRESS_UPSERT_PATCH)
        # decided once, at the start of the run: a patch marker is a command too, and must not depend on
        # when a signal happens to arrive
        self._st.progress_upserts = not workflow.patched(NO_PROGRESS_UPSERT_PATCH)
        s = self._st.s
        if inp.carry is None:
            s.epoch = 1
            s.phase_entered_at = workflow.now()
            s.transitions.append(TransitionRecord(from_phase=Phase.PREPARE, to_phase=Phase.PREPARE,
                                                  at=workflow.now(), by=inp.started_by, reason="started",
                                                  kind="start"))
            workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(Phase.PREPARE.value),
                                               BACKFILL_PERCENT.value_set(0)])
            # PREPARE's work checks the spec against the stores *before* anything is written, then publishes
            self._entry.start()
        elif not s.phase_work_done:
            self._entry.start()
        for ts in s.tenants:
            if not ts.work_done:
                self._entry.start_tenant(ts.tenant, ts.phase, s.epoch)
        self._start_background()
        self._rendering.render()
        while True:
            if self._st.fatal is not None:
                await self._stop_background()
                raise self._st.fatal
            if (s.phase is Phase.DONE and s.phase_work_done) or s.aborted is not None:
                break
            if self._st.progress_in_loop and self._st.progress_dirty:
                self._st.progress_dirty = False
                if self._st.progress_upserts and s.phase is Phase.BACKFILL and s.backfill_percent_step < 100:
                    self._entry.upsert_backfill_percent()
            await self._transitions.maybe_auto_advance()
            self._verifications.maybe_start()
            if self._st.idle() and workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new(inp)
            self._rendering.render()
            seen = self._st.wake
            timeout = self._next_timeout()
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._changed_since(seen), timeout=timeout)
        await self._stop_background()
        self._rendering.render()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _changed_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._st.wake != seen or self._st.fatal is not None

    def _start_background(self) -> None:
        self._st.stopping = False
        self._st.drain = asyncio.create_task(self._repairs.loop())
        self._st.monitor = asyncio.create_task(self._monitoring.loop())

    async def _continue_as_new(self, inp: MigrationInput) -> None:
        """Continue as new if still idle once handlers and the background tasks have stopped; else later."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._st.idle():
            return
        await self._stop_background()
        if not (self._st.idle() and workflow.all_handlers_finished()):
            # an operator (or the trigger monitor) started something meanwhile: keep this run going
            self._start_background()
            return
        self._st.s.runs += 1
        self._st.count("continued_as_new")
        workflow.continue_as_new(MigrationInput(spec=self._st.spec, started_by=self._st.s.started_by,
                                                tuning=self._st.tuning, carry=self._st.s))

    async def _stop_background(self) -> None:
        """Stop the repair drain and the trigger monitor and wait until their activities have returned."""
        self._st.stopping = True
        for task in (self._st.drain, self._st.monitor):
            if task is not None:
                await cancel_task(task)
        self._st.drain = None
        self._st.monitor = None

    def _next_timeout(self) -> timedelta | None:
        """The next moment something is due without a wake-up: a continuous verification, a gate recheck."""
        s = self._st.s
        waits: list[float] = []
        # only timers that can act when they fire: a verification blocked by phase work, a pause or a
        # running verification is started by the wake-up that unblocks it, not by polling
        if (s.next_verify_at is not None and self._st.verification_allowed() and not s.paused
                and s.phase_work_done and self._st.idle()):
            waits.append((s.next_verify_at - workflow.now()).total_seconds())
        if (self._st.spec.mode.value == "auto" and self._st.gate_checked_at is not None and s.gate is not None
                and not s.gate.get("passed") and not s.holds):
            waits.append(self._st.tuning.gate_recheck_seconds
                         - (workflow.now() - self._st.gate_checked_at).total_seconds())
        if not waits:
            return None
        return timedelta(seconds=max(1.0, min(waits)))

    # =====================================================================================================
    # operator interface: updates (validated, answered) and the same as signals (for the Web UI)

    # Every handler takes ``*args``: whatever a caller sends (nothing, null, a string, two values, a 1 MB
    # reason) reaches the handler, which validates it itself. A typed parameter would turn "no input" into a
    # TypeError and JSON null into an AttributeError inside workflow code: a failing workflow task that is
    # retried forever, freezing the migration (updates, queries and rollback triggers included). Updates
    # reject bad input in their validator (nothing reaches history); signals drop it with a log line.

    @workflow.update(description="Advance to the next phase (gated into CUTOVER_* and CLEANUP; CLEANUP needs "
                                 "confirm_cleanup). {to?, from_phase?, reason, by, force, dry_run, tenant?, "
                                 "confirm_cleanup, drop_old_tables, confirm_drop}; with from_phase (the phase it "
                                 "leaves) a repeated advance is a no-op")
    async def advance(self, *args: Any) -> TransitionResult:
        return await self._transitions.advance(self._request(args), kind="advance")

    @advance.validator
    def _validate_advance(self, *args: Any) -> None:
        req = self._request(args)
        if phases.stale_advance(self._st.view(req.tenant), req):
            return  # answered by the handler as a no-op success that says why
        self._check(phases.resolve_advance, req)

    @workflow.update(description="Roll back to an earlier phase (default: the previous one); old store "
                                 "authoritative again, no row lost. Needs a reason. {to?, reason, by, tenant?}")
    async def rollback(self, *args: Any) -> TransitionResult:
        return await self._transitions.rollback(self._request(args))

    @rollback.validator
    def _validate_rollback(self, *args: Any) -> None:
        self._check(phases.resolve_rollback, self._request(args))

    @workflow.update(description="Pause: no transitions, no new backfill ranges, no scheduled "
                                 "verification. {reason, by}")
    async def pause(self, *args: Any) -> TransitionResult:
        return await self._requests.pause(self._request(args), paused=True)

    @pause.validator
    def _validate_pause(self, *args: Any) -> None:
        self._check(phases.check_pause, self._request(args))

    @workflow.update(description="Resume a paused migration. {reason, by}")
    async def resume(self, *args: Any) -> TransitionResult:
        return await self._requests.pause(self._request(args), paused=False)

    @resume.validator
    def _validate_resume(self, *args: Any) -> None:
        self._check(phases.check_resume, self._request(args))

    @workflow.update(description="Approve the next gated transition (or, in auto mode, entering "
                                 "CLEANUP with confirm_cleanup). {to?, reason, by, tenant?}")
    async def approve(self, *args: Any) -> TransitionResult:
        return await self._requests.approve(self._request(args))

    @approve.validator
    def _validate_approve(self, *args: Any) -> None:
        self._check(phases.resolve_approve, self._request(args))

    @workflow.update(description="Hold: no forward transition (manual or auto) until released; phase work "
                                 "and rollbacks go on. {reason, by, tenant?, release}")
    async def hold(self, *args: Any) -> TransitionResult:
        return await self._requests.hold(self._request(args))

    @hold.validator
    def _validate_hold(self, *args: Any) -> None:
        self._check(phases.check_hold, self._request(args))

    @workflow.update(description="Run a verification now (compare, repair, re-verify). {reason, by, tenant?}")
    async def verify(self, *args: Any) -> TransitionResult:
        return await self._requests.request_verify(self._request(args))

    @verify.validator
    def _validate_verify(self, *args: Any) -> None:
        self._check(phases.check_verify, self._request(args))

    @workflow.update(description="Abort the migration (any phase before CLEANUP): authority back to the old "
                                 "store (fenced, as a rollback), then its triggers, key-log entries, relay, "
                                 "child workflows and control rows are removed and the workflow completes. The "
                                 "old store is untouched; the new store's data is left as it is. {reason, by}")
    async def abort(self, *args: Any) -> TransitionResult:
        return await self._aborter.abort(self._request(args))

    @abort.validator
    def _validate_abort(self, *args: Any) -> None:
        req = self._request(args)
        if self._st.s.aborted is not None or self._st.aborting:
            raise reject("the migration is already being aborted")
        self._check(phases.check_abort, req)

    @staticmethod
    def _request(args: tuple[Any, ...]) -> TransitionRequest:
        """The operator request of an update; bad input fails the update (never the workflow task)."""
        try:
            return phases.parse_request(args)
        except phases.Rejected as exc:
            raise ApplicationError(str(exc), type="InvalidRequest", non_retryable=True) from None

    def _check(self, rule: Any, req: TransitionRequest) -> None:
        try:
            rule(self._st.view(req.tenant), req)
        except phases.Rejected as exc:
            raise reject(str(exc)) from None

    def _signal_request(self, name: str, args: tuple[Any, ...]) -> TransitionRequest | None:
        """The request a signal carries, or None when its input is bad: dropped, logged, counted, shown."""
        try:
            req = phases.parse_request(args)
        except phases.Rejected as exc:
            self._drop_signal(name, str(exc))
            return None
        if self._st.s.aborted is not None or self._st.aborting:
            self._drop_signal(name, "the migration is being aborted")
            return None
        return req

    def _drop_signal(self, name: str, why: str) -> None:
        self._st.count("signals_dropped")
        self._st.dropped = [*self._st.dropped, f"{name}: {why}"][-5:]
        self._st.last_signal_rejection = f"signal {name} dropped: {why}"
        workflow.logger.warning("signal %s dropped: %s", name, why)
        self._st.wake += 1

    def _signal_ok(self, rule: Any, req: TransitionRequest, name: str) -> bool:
        """Signals cannot be refused: a rejected one is logged and shown in the details instead."""
        try:
            rule(self._st.view(req.tenant), req)
        except phases.Rejected as exc:
            self._st.last_signal_rejection = f"{name} by {req.by or '?'} rejected: {exc}"
            self._st.count("signals_rejected")
            workflow.logger.warning("signal %s rejected: %s", name, exc)
            self._st.wake += 1
            return False
        return True

    @workflow.signal(name="capture_lost_signal", description="From the migration's relay (not for operators): "
                                                              "what log capture missed, shown by status.")
    def capture_lost_signal(self, *args: Any) -> None:
        lost = args[0].get("lost") if len(args) == 1 and isinstance(args[0], dict) else None
        if not isinstance(lost, list) or not all(isinstance(m, str) for m in lost):
            self._drop_signal("capture_lost_signal", "expected {\"lost\": [text, ...]}")
            return
        self._st.s.capture_lost = [m[:500] for m in lost[:10]]
        self._st.wake += 1

    @workflow.signal(name="advance_signal", description="Same as the advance update (for the Web UI); give "
                                                        "from_phase so that a double click moves one phase.")
    async def advance_signal(self, *args: Any) -> None:
        req = self._signal_request("advance_signal", args)
        if req is None:
            return
        stale = phases.stale_advance(self._st.view(req.tenant), req)
        if stale:
            self._st.last_signal_rejection = f"advance by {req.by or '?'}: {stale}"
            self._st.wake += 1
            return
        if self._signal_ok(phases.resolve_advance, req, "advance"):
            await self._transitions.advance(req, kind="advance")

    @workflow.signal(name="rollback_signal", description="Same as the rollback update (for the Web UI).")
    async def rollback_signal(self, *args: Any) -> None:
        req = self._signal_request("rollback_signal", args)
        if req is not None and self._signal_ok(phases.resolve_rollback, req, "rollback"):
            await self._transitions.rollback(req)

    @workflow.signal(name="pause_signal", description="Same as the pause update (for the Web UI).")
    async def pause_signal(self, *args: Any) -> None:
        req = self._signal_request("pause_signal", args)
        if req is not None and self._signal_ok(phases.check_pause, req, "pause"):
            await self._requests.pause(req, paused=True)

    @workflow.signal(name="resume_signal", description="Same as the resume update (for the Web UI).")
    async def resume_signal(self, *args: Any) -> None:
        req = self._signal_request("resume_signal", args)
        if req is not None and self._signal_ok(phases.check_resume, req, "resume"):
            await self._requests.pause(req, paused=False)

    @workflow.signal(name="approve_signal", description="Same as the approve update (for the Web UI).")
    async def approve_signal(self, *args: Any) -> None:
        req = self._signal_request("approve_signal", args)
        if req is not None and self._signal_ok(phases.resolve_approve, req, "approve"):
            await self._requests.approve(req)

    @workflow.signal(name="hold_signal", description="Same as the hold update (for the Web UI).")
    async def hold_signal(self, *args: Any) -> None:
        req = self._signal_request("hold_signal", args)
        if req is not None and self._signal_ok(phases.check_hold, req, "hold"):
            await self._requests.hold(req)

    @workflow.signal(name="verify_signal", description="Same as the verify update (for the Web UI).")
    async def verify_signal(self, *args: Any) -> None:
        req = self._signal_request("verify_signal", args)
        if req is not None and self._signal_ok(phases.check_verify, req, "verify"):
            await self._requests.request_verify(req)

    @workflow.signal(name=PROGRESS_SIGNAL, description="Internal: backfill progress from a child.")
    def backfill_progress(self, *args: Any) -> None:
        try:
            if len(args) != 1:
                raise ValueError(f"expected one progress report, got {len(args)} values")
            p = BackfillProgress.model_validate(args[0])
        except ValueError as exc:  # pydantic's ValidationError is one
            self._drop_signal(PROGRESS_SIGNAL, str(exc).splitlines()[0][:200])
            return
        if self._st.s.phase is not Phase.BACKFILL or self._st.s.phase_work_done:
            return
        for t in self._st.s.tables:
            if t.source == p.source:
                t.rows_copied, t.rows_estimate = p.rows_copied, p.rows_estimate
                t.ranges_done, t.ranges_total, t.eta_seconds = p.ranges_done, p.ranges_total, p.eta_seconds
                t.done = p.done
                t.percent = 100 if p.done else min(99, int(100 * p.rows_copied / max(p.rows_estimate, 1)))
        # no command from here: a signal delivered in the same task as an activity completion is not always
        # applied in the same order on replay as it was originally (an upsert here once came out ahead of the
        # repair drain's next activity on replay: a nondeterminism error after a worker kill); the main loop
        # upserts the search attribute after the coroutines the task woke have issued their commands
        if not self._st.progress_in_loop:
            self._entry.upsert_backfill_percent()
        self._st.progress_dirty = True
        self._st.wake += 1

    @workflow.query(description="The full status: phase, per-table progress, counters, last verification, "
                                "gate evidence, holds, tenants side by side, transitions, repair queue depth.")
    def status(self, *_args: Any) -> MigrationStatus:
        return self._rendering.status()
