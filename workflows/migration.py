"""MigrationWorkflow: one per migration (id ``dualwrite-<name>``), the phase machine of DESIGN.md.

PREPARE -> DUAL_WRITE -> BACKFILL -> SHADOW_READ -> CUTOVER_READS -> CUTOVER_WRITES -> CLEANUP -> DONE.

How a phase change happens (always under one lock, so transitions never interleave):

1. the update *validator* applies the pure rules of :mod:`workflows.phases`; an illegal request is
   rejected with its reason and writes nothing to history;
2. a gated transition (into CUTOVER_READS, CUTOVER_WRITES, CLEANUP) evaluates its gate through an
   activity: each metric's value, threshold, sample count and verdict land in history as the activity's
   result. When the last verification is older than the gate's window (or in the wrong direction), a
   compare-only verification runs first, so the evidence names rows that do not match. A forced advance
   past a failing gate records its reason; entering CLEANUP needs its own confirmation;
3. :func:`phases.plan_advance` / :func:`phases.plan_rollback` decide what changes. A rollback that gives
   authority back to the old store (out of CUTOVER_WRITES, for the migration or for one tenant) first
   drains the repair queue and (``outbox`` / ``triggers``) mirrors every key-log entry logged so far, then
   verifies new -> old with repair: only a clean result lets it flip. Keys logged after that drain point are
   in flight (the relay mirrors them), not differences, so live writes do not keep the rollback refused;
4. when authority moves between the stores (into CUTOVER_WRITES, out of it, or a tenant's flip), a *write
   fence* comes first: a state with ``overrides["fence"]`` (the whole migration, or the one tenant) is
   published under a new epoch and the workflow waits for its barrier, which an instance acknowledges only
   once no unit of work routed under an older epoch is still open there; the adapters hold new writes of
   the fenced scope meanwhile. With writes fenced it drains the repair queue and (``outbox`` / ``triggers``)
   the key logs, so no write acknowledged under the old authority is still on its way when the new one
   starts. Any failure in between lifts the fence under the old authority and the change is refused;
5. the epoch grows, (phase, epoch, per-tenant overrides) is published to the control tables, and the
   phase's *entry work* starts: wait for the phase barrier (every live application instance has seen the
   epoch), then the phase's own work (preflight, backfill children then a verification, a verification,
   or, in CLEANUP, retiring the old store).

A rollback is carried out by an update handler, and an accepted update is part of the workflow's history:
if the worker dies or the Temporal server restarts in the middle, the next worker replays the handler to
where it was and finishes it. Applications are never left with two authorities: authority only moves by
publishing a new epoch, and nothing relies on the new order until the barrier has passed.

During CUTOVER_READS / CUTOVER_WRITES a monitor long-polls the live statistics (activity
``watch_rollback_triggers``); when the shadow mismatch rate or the new store's error rate crosses its
threshold the workflow rolls back one step by itself, records why, and holds there for an operator.

Tenants (spec ``tenants``): each tenant may move through SHADOW_READ..CUTOVER_WRITES on its own with its
own gate, approval, hold, rollback and verification (``tenant=`` on the requests); the applications see
per-tenant overrides. Operators drive it with updates (CLI) or the same-named ``*_signal`` signals (Web
UI). In auto mode the workflow advances the migration by itself once a phase's work is done and its gate
passes, and always holds before CLEANUP unless the spec sets ``auto_cleanup``. Alongside, a repair drain
mirrors keys of failed secondary writes, and a continuous verification runs with jitter from DUAL_WRITE
until CLEANUP when ``verify_interval_seconds`` is set.

With ``outbox`` / ``triggers`` the workflow starts the migration's RelayWorkflow itself at PREPARE (after the
preflight), as a child with the relay's fixed id that outlives it; one already running is adopted, so
however the migration was started (CLI, Web UI, a script) exactly one relay drains the key logs until
CLEANUP tells it to finish.

Operator input is never trusted to be well formed: every handler takes whatever arrives, updates reject bad
input in their validators and signals drop it (counted, shown in status), so no input can fail a workflow
task. An advance may name the phase it leaves (``from_phase``): a stale one is a no-op. ``abort`` (before
CLEANUP) returns authority to the old store the way a rollback to PREPARE would, removes the migration's
capture and control state, and completes the workflow with ``aborted`` set.

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
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from workflows import bypass as bp
    from workflows import phases
    from workflows.backfill import PERMANENT_ERRORS, PROGRESS_SIGNAL, BackfillWorkflow
    from workflows.models import (
        BACKFILL_PERCENT,
        MIGRATION_PHASE,
        AbortCleanupInput,
        AbortCleanupResult,
        AbortRecord,
        ActivityNames,
        BackfillInput,
        BackfillProgress,
        BackfillResult,
        BarrierStatus,
        ControlInput,
        GateInput,
        GateResult,
        HoldState,
        MigrationCarry,
        MigrationInput,
        MigrationStatus,
        PauseState,
        Phase,
        PrepareInput,
        PrepareResult,
        RepairDrainInput,
        RepairDrainResult,
        RetireInput,
        RetireResult,
        TableProgress,
        TableRef,
        TenantState,
        TenantStatus,
        TransitionRecord,
        TransitionRequest,
        TransitionResult,
        TriggerScope,
        TriggerWatchInput,
        TriggerWatchResult,
        VerificationSummary,
        VerifyInput,
    )
    from workflows.relay import (
        FINISH_SIGNAL,
        RELAY_CATCH_UP,
        RELAY_DENY,
        CatchUpInput,
        CatchUpResult,
        DenyWritesInput,
        RelayInput,
        RelayWorkflow,
        poller_task_queue,
        relay_workflow_id,
    )
    from workflows.sampling import SAMPLE_SHADOW, ShadowSampleInput, ShadowSampleResult
    from workflows.verify import VerificationWorkflow, failure_message

ABORTED = "ABORTED"
"""MigrationPhase search attribute of an aborted migration (``dualwrite list`` shows it)."""
FENCE_KEY = "fence"
"""``overrides`` key of a write fence (dualwrite.control.FENCE; the workflow does not import dualwrite)."""

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                     maximum_interval=timedelta(seconds=60), non_retryable_error_types=PERMANENT_ERRORS)

MAX_TRANSITIONS_KEPT = 200
ROLLBACK_KINDS = ("rollback", "auto-rollback")
TRIGGER_WATCH_SECONDS = 300.0
"""One trigger watch returns after this long when nothing tripped (a few history events per period)."""
CATCH_UP_SECONDS = 120.0
"""outbox / triggers: how long mirroring the key logs up to their drain point may take before a rollback
gives up (and is refused) or a phase's verification goes ahead anyway."""
RELAY_AUTOSTART_PATCH = "relay-autostart"
"""Histories from before: PREPARE did not start the relay (whoever ran the migration started it)."""
PROGRESS_UPSERT_PATCH = "progress-upsert-in-loop"
"""Histories from before: the backfill progress signal handler upserted BackfillPercent itself."""
CATCH_UP_PATCH = "relay-catch-up"
"""Histories from before: no key-log catch-up before a rollback's or a phase's repairing verification."""
NO_PROGRESS_UPSERT_PATCH = "no-progress-upsert"
"""Histories from before: BackfillPercent followed the children's progress signals in steps of 10. A command
issued because a signal arrived can land in another order on replay when the signal shares a workflow task
with an activity completion (sdk-python #673): after a worker kill the chaos run met "Nondeterminism error: No
command scheduled for event UpsertWorkflowSearchAttributes" and the migration froze. BackfillPercent is now
set only where the workflow's own code decides (0 on entering BACKFILL, 100 when it completes); the status
query and the Web UI's details still show the exact percentage."""
WRITE_FENCE_PATCH = "write-fence"
"""Histories from before: authority moved between the stores without a write fence."""
DENY_WRITES_PATCH = "deny-writes"
"""Histories from before: with ``triggers`` the store that was not authoritative accepted the application's
writes (and a later mirror or repair overwrote them); both key logs were mirrored at every moment."""
WORKER_SAMPLE_PATCH = "worker-shadow-sample"
"""Histories from before: a ``triggers`` gate read only application statistics (which never exist there)."""
ROLLBACK_HOLDS_AUTO_PATCH = "rollback-holds-auto"
"""Histories from before: auto mode advanced again right after an operator's rollback."""


def _reject(reason: str) -> ApplicationError:
    return ApplicationError(reason, type="IllegalTransition", non_retryable=True)


def _scope(tenant: str | None) -> str:
    return phases.GLOBAL if tenant is None else tenant


def _who(tenant: str | None) -> str:
    return "" if tenant is None else f"tenant {tenant}: "


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
        self._tenant_work: dict[str, asyncio.Task[None]] = {}
        self._drain: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._drain_stop = False
        self._fatal: BaseException | None = None
        self._wake = 0
        self._gate_dirty = True
        self._gate_checked_at: Any = None
        self._last_signal_rejection = ""
        self._dropped: list[str] = []
        self._aborting = False
        self._backfill_children: list[str] = []
        self._progress_in_loop = False
        self._progress_upserts = True
        self._progress_dirty = False
        """Backfill progress signals upsert BackfillPercent from the main loop (histories from before: from the
        signal handler)."""
        self._fence: tuple[bool, tuple[str, ...]] | None = None
        """A write fence in force: (the whole migration, the tenants fenced). Only set inside a transition
        handler (under the lock), so it never needs to survive continue-as-new."""

    # =====================================================================================================
    # run

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        self._progress_in_loop = workflow.patched(PROGRESS_UPSERT_PATCH)
        # decided once, at the start of the run: a patch marker is a command too, and must not depend on
        # when a signal happens to arrive
        self._progress_upserts = not workflow.patched(NO_PROGRESS_UPSERT_PATCH)
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
        for ts in s.tenants:
            if not ts.work_done:
                self._start_tenant_work(ts.tenant, ts.phase, s.epoch)
        self._start_background()
        self._render()
        while True:
            if self._fatal is not None:
                await self._stop_background()
                raise self._fatal
            if (s.phase is Phase.DONE and s.phase_work_done) or s.aborted is not None:
                break
            if self._progress_in_loop and self._progress_dirty:
                self._progress_dirty = False
                if self._progress_upserts and s.phase is Phase.BACKFILL and s.backfill_percent_step < 100:
                    self._upsert_backfill_percent()
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
                and (self._verify is None or self._verify.done())
                and all(t.done() for t in self._tenant_work.values()))

    def _start_background(self) -> None:
        self._drain_stop = False
        self._drain = asyncio.create_task(self._drain_loop())
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def _continue_as_new(self, inp: MigrationInput) -> None:
        """Continue as new if still idle once handlers and the background tasks have stopped; else later."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._idle():
            return
        await self._stop_background()
        if not (self._idle() and workflow.all_handlers_finished()):
            # an operator (or the trigger monitor) started something meanwhile: keep this run going
            self._start_background()
            return
        self._s.runs += 1
        self._count("continued_as_new")
        workflow.continue_as_new(MigrationInput(spec=self._spec, started_by=self._s.started_by,
                                                tuning=self._tuning, carry=self._s))

    async def _stop_background(self) -> None:
        """Stop the repair drain and the trigger monitor and wait until their activities have returned."""
        self._drain_stop = True
        for task in (self._drain, self._monitor):
            if task is not None:
                await _cancel(task)
        self._drain = None
        self._monitor = None

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
                and not s.gate.get("passed") and not s.holds):
            waits.append(self._tuning.gate_recheck_seconds
                         - (workflow.now() - self._gate_checked_at).total_seconds())
        if not waits:
            return None
        return timedelta(seconds=max(1.0, min(waits)))

    # =====================================================================================================
    # state helpers

    def _tenant_phases(self) -> dict[str, Phase]:
        return {t.tenant: t.phase for t in self._s.tenants}

    def _tenant(self, tenant: str | None) -> TenantState | None:
        if tenant is None:
            return None
        return next((t for t in self._s.tenants if t.tenant == tenant), None)

    def _own(self, ts: TenantState | None) -> bool:
        """A tenant moved on its own when it is ahead (an entry may only hold an approval)."""
        return ts is not None and ts.phase.rank > self._s.phase.rank

    def _hold_text(self, tenant: str | None) -> str:
        h = self._s.holds.get(_scope(tenant))
        return "" if h is None else f"by {h.by or '?'}: {h.reason}"

    def _phase_of(self, tenant: str | None) -> Phase:
        return phases.effective_phase(self._s.phase, self._tenant_phases(), tenant)

    def view(self, tenant: str | None = None, *, planning: bool = False) -> phases.MachineView:
        """The rules' snapshot; ``planning``: from inside the transition being carried out."""
        s = self._s
        tv = None
        if tenant is not None:
            ts = self._tenant(tenant)
            tv = phases.TenantView(tenant=tenant, phase=self._phase_of(tenant), own=self._own(ts),
                                   work_done=ts.work_done if ts else True, work_state=ts.work_state if ts else "",
                                   held=self._hold_text(tenant), approved_for=ts.approved_for if ts else None)
        return phases.MachineView(
            phase=s.phase, paused=s.paused, auto=self._spec.mode.value == "auto",
            auto_cleanup=self._spec.auto_cleanup, require_approval=self._spec.gates.require_approval,
            transitioning="" if planning else self._transitioning, work_done=s.phase_work_done,
            work_state=s.work_state, verifying=self._verify is not None and not self._verify.done(),
            approved_for=s.approved_for, held=self._hold_text(None), name=self._spec.name,
            tenancy=self._spec.tenants is not None, tenants=phases.follow(s.phase, self._tenant_phases()),
            tenant=tv)

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
        return await self._advance(self._request(args), kind="advance")

    @advance.validator
    def _validate_advance(self, *args: Any) -> None:
        req = self._request(args)
        if phases.stale_advance(self.view(req.tenant), req):
            return  # answered by the handler as a no-op success that says why
        self._check(phases.resolve_advance, req)

    @workflow.update(description="Roll back to an earlier phase (default: the previous one); old store "
                                 "authoritative again, no row lost. Needs a reason. {to?, reason, by, tenant?}")
    async def rollback(self, *args: Any) -> TransitionResult:
        return await self._rollback(self._request(args))

    @rollback.validator
    def _validate_rollback(self, *args: Any) -> None:
        self._check(phases.resolve_rollback, self._request(args))

    @workflow.update(description="Pause: no transitions, no new backfill ranges, no scheduled "
                                 "verification. {reason, by}")
    async def pause(self, *args: Any) -> TransitionResult:
        return await self._pause(self._request(args), paused=True)

    @pause.validator
    def _validate_pause(self, *args: Any) -> None:
        self._check(phases.check_pause, self._request(args))

    @workflow.update(description="Resume a paused migration. {reason, by}")
    async def resume(self, *args: Any) -> TransitionResult:
        return await self._pause(self._request(args), paused=False)

    @resume.validator
    def _validate_resume(self, *args: Any) -> None:
        self._check(phases.check_resume, self._request(args))

    @workflow.update(description="Approve the next gated transition (or, in auto mode, entering "
                                 "CLEANUP with confirm_cleanup). {to?, reason, by, tenant?}")
    async def approve(self, *args: Any) -> TransitionResult:
        return await self._approve(self._request(args))

    @approve.validator
    def _validate_approve(self, *args: Any) -> None:
        self._check(phases.resolve_approve, self._request(args))

    @workflow.update(description="Hold: no forward transition (manual or auto) until released; phase work "
                                 "and rollbacks go on. {reason, by, tenant?, release}")
    async def hold(self, *args: Any) -> TransitionResult:
        return await self._hold(self._request(args))

    @hold.validator
    def _validate_hold(self, *args: Any) -> None:
        self._check(phases.check_hold, self._request(args))

    @workflow.update(description="Run a verification now (compare, repair, re-verify). {reason, by, tenant?}")
    async def verify(self, *args: Any) -> TransitionResult:
        return await self._request_verify(self._request(args))

    @verify.validator
    def _validate_verify(self, *args: Any) -> None:
        self._check(phases.check_verify, self._request(args))

    @workflow.update(description="Abort the migration (any phase before CLEANUP): authority back to the old "
                                 "store (fenced, as a rollback), then its triggers, key-log entries, relay, "
                                 "child workflows and control rows are removed and the workflow completes. The "
                                 "old store is untouched; the new store's data is left as it is. {reason, by}")
    async def abort(self, *args: Any) -> TransitionResult:
        return await self._abort(self._request(args))

    @abort.validator
    def _validate_abort(self, *args: Any) -> None:
        req = self._request(args)
        if self._s.aborted is not None or self._aborting:
            raise _reject("the migration is already being aborted")
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
            rule(self.view(req.tenant), req)
        except phases.Rejected as exc:
            raise _reject(str(exc)) from None

    def _signal_request(self, name: str, args: tuple[Any, ...]) -> TransitionRequest | None:
        """The request a signal carries, or None when its input is bad: dropped, logged, counted, shown."""
        try:
            req = phases.parse_request(args)
        except phases.Rejected as exc:
            self._drop_signal(name, str(exc))
            return None
        if self._s.aborted is not None or self._aborting:
            self._drop_signal(name, "the migration is being aborted")
            return None
        return req

    def _drop_signal(self, name: str, why: str) -> None:
        self._count("signals_dropped")
        self._dropped = [*self._dropped, f"{name}: {why}"][-5:]
        self._last_signal_rejection = f"signal {name} dropped: {why}"
        workflow.logger.warning("signal %s dropped: %s", name, why)
        self._wake += 1

    def _signal_ok(self, rule: Any, req: TransitionRequest, name: str) -> bool:
        """Signals cannot be refused: a rejected one is logged and shown in the details instead."""
        try:
            rule(self.view(req.tenant), req)
        except phases.Rejected as exc:
            self._last_signal_rejection = f"{name} by {req.by or '?'} rejected: {exc}"
            self._count("signals_rejected")
            workflow.logger.warning("signal %s rejected: %s", name, exc)
            self._wake += 1
            return False
        return True

    @workflow.signal(name="advance_signal", description="Same as the advance update (for the Web UI); give "
                                                        "from_phase so that a double click moves one phase.")
    async def advance_signal(self, *args: Any) -> None:
        req = self._signal_request("advance_signal", args)
        if req is None:
            return
        stale = phases.stale_advance(self.view(req.tenant), req)
        if stale:
            self._last_signal_rejection = f"advance by {req.by or '?'}: {stale}"
            self._wake += 1
            return
        if self._signal_ok(phases.resolve_advance, req, "advance"):
            await self._advance(req, kind="advance")

    @workflow.signal(name="rollback_signal", description="Same as the rollback update (for the Web UI).")
    async def rollback_signal(self, *args: Any) -> None:
        req = self._signal_request("rollback_signal", args)
        if req is not None and self._signal_ok(phases.resolve_rollback, req, "rollback"):
            await self._rollback(req)

    @workflow.signal(name="pause_signal", description="Same as the pause update (for the Web UI).")
    async def pause_signal(self, *args: Any) -> None:
        req = self._signal_request("pause_signal", args)
        if req is not None and self._signal_ok(phases.check_pause, req, "pause"):
            await self._pause(req, paused=True)

    @workflow.signal(name="resume_signal", description="Same as the resume update (for the Web UI).")
    async def resume_signal(self, *args: Any) -> None:
        req = self._signal_request("resume_signal", args)
        if req is not None and self._signal_ok(phases.check_resume, req, "resume"):
            await self._pause(req, paused=False)

    @workflow.signal(name="approve_signal", description="Same as the approve update (for the Web UI).")
    async def approve_signal(self, *args: Any) -> None:
        req = self._signal_request("approve_signal", args)
        if req is not None and self._signal_ok(phases.resolve_approve, req, "approve"):
            await self._approve(req)

    @workflow.signal(name="hold_signal", description="Same as the hold update (for the Web UI).")
    async def hold_signal(self, *args: Any) -> None:
        req = self._signal_request("hold_signal", args)
        if req is not None and self._signal_ok(phases.check_hold, req, "hold"):
            await self._hold(req)

    @workflow.signal(name="verify_signal", description="Same as the verify update (for the Web UI).")
    async def verify_signal(self, *args: Any) -> None:
        req = self._signal_request("verify_signal", args)
        if req is not None and self._signal_ok(phases.check_verify, req, "verify"):
            await self._request_verify(req)

    @workflow.signal(name=PROGRESS_SIGNAL, description="Internal: backfill progress from a child.")
    def backfill_progress(self, *args: Any) -> None:
        try:
            if len(args) != 1:
                raise ValueError(f"expected one progress report, got {len(args)} values")
            p = BackfillProgress.model_validate(args[0])
        except ValueError as exc:  # pydantic's ValidationError is one
            self._drop_signal(PROGRESS_SIGNAL, str(exc).splitlines()[0][:200])
            return
        if self._s.phase is not Phase.BACKFILL or self._s.phase_work_done:
            return
        for t in self._s.tables:
            if t.source == p.source:
                t.rows_copied, t.rows_estimate = p.rows_copied, p.rows_estimate
                t.ranges_done, t.ranges_total, t.eta_seconds = p.ranges_done, p.ranges_total, p.eta_seconds
                t.done = p.done
                t.percent = 100 if p.done else min(99, int(100 * p.rows_copied / max(p.rows_estimate, 1)))
        # no command from here: a signal delivered in the same task as an activity completion is not always
        # applied in the same order on replay as it was originally (an upsert here once came out ahead of the
        # repair drain's next activity on replay: a nondeterminism error after a worker kill); the main loop
        # upserts the search attribute after the coroutines the task woke have issued their commands
        if not self._progress_in_loop:
            self._upsert_backfill_percent()
        self._progress_dirty = True
        self._wake += 1

    @workflow.query(description="The full status: phase, per-table progress, counters, last verification, "
                                "gate evidence, holds, tenants side by side, transitions, repair queue depth.")
    def status(self, *_args: Any) -> MigrationStatus:
        s = self._s
        return MigrationStatus(
            name=self._spec.name, phase=s.phase, paused=s.paused, mode=self._spec.mode.value,
            strategy=self._spec.strategy.value, epoch=s.epoch, tables=[t.model_copy() for t in s.tables],
            counters=dict(s.counters), last_verification=s.last_verification, gate=s.gate,
            transitions=list(s.transitions), repair_queue_depth=s.repair_queue_depth,
            waiting_for=self._waiting_for(), hold=s.holds.get(phases.GLOBAL), tenants=self._tenant_rows(),
            rolling_back=s.rolling_back, triggers=s.triggers, retirement=s.retirement, aborted=s.aborted,
            signals_dropped=list(self._dropped), bypass=s.bypass)

    def _tenant_rows(self) -> list[TenantStatus]:
        if self._spec.tenants is None:
            return []
        s = self._s
        names = list(self._spec.tenants.ids) + [t.tenant for t in s.tenants
                                                if t.tenant not in self._spec.tenants.ids]
        names += [k for k in s.holds if k and k not in names]
        rows: list[TenantStatus] = []
        for name in names:
            ts = self._tenant(name)
            phase = self._phase_of(name)
            gate = ts.gate if ts is not None else None
            rows.append(TenantStatus(
                tenant=name, phase=phase, own=self._own(ts), authoritative=phases.authoritative(phase),
                reads_from=phases.reads_from(phase), work_state=ts.work_state if ts else "",
                hold=s.holds.get(name), gate_passed=None if gate is None else bool(gate.get("passed")),
                last_verification_ok=None if ts is None or ts.last_verification is None
                else ts.last_verification.ok))
        return rows

    # =====================================================================================================
    # transitions

    async def _advance(self, req: TransitionRequest, *, kind: str) -> TransitionResult:
        async with self._lock:
            stale = phases.stale_advance(self.view(req.tenant), req)
            if stale:  # a repeated / concurrent advance: the phase it meant to leave is already left
                self._count("advances_already_done")
                return self._result(True, stale, tenant=req.tenant)
            try:
                to = phases.resolve_advance(self.view(req.tenant), req)
            except phases.Rejected as exc:
                return self._result(False, str(exc), tenant=req.tenant)
            frm = self._phase_of(req.tenant)
            label = f"{_who(req.tenant)}{frm} -> {to}"
            self._transitioning = label
            try:
                gate: GateResult | None = None
                if to in phases.GATED:
                    gate = await self._gate(to, req.tenant, label, dry_run=req.dry_run)
                try:
                    plan = phases.plan_advance(self.view(req.tenant, planning=True), req, gate, kind)
                except phases.Rejected as exc:
                    return self._result(False, str(exc), tenant=req.tenant, gate=gate,
                                        would=self._would(frm, to, req, gate) if req.dry_run else [])
                if req.dry_run:
                    note = " (forced past a failing gate)" if plan.kind == "force" else ""
                    return self._result(True, f"dry run: {label} would be accepted{note}", tenant=req.tenant,
                                        gate=gate, would=self._would(frm, to, req, gate))
                if plan.kind == "force":
                    self._count("forced_transitions")
                if to is Phase.CLEANUP:
                    self._s.cleanup_drop = req.drop_old_tables or self._s.cleanup_drop
                reason = req.reason
                if to is Phase.CLEANUP and kind == "advance":
                    reason = (reason + "; " if reason else "") + "CLEANUP confirmed" + (
                        ", old tables will be DROPPED" if self._s.cleanup_drop else "")
                refused = await self._fence_for(plan)
                if refused:
                    return self._result(False, refused, tenant=req.tenant, gate=gate)
                await self._enter(plan, by=req.by, reason=reason)
                await self._lift_denial(plan)
                return self._result(True, f"{label} (epoch {self._s.epoch}); waiting for the phase barrier",
                                    tenant=req.tenant, gate=gate)
            finally:
                self._transitioning = ""

    def _would(self, frm: Phase, to: Phase, req: TransitionRequest, gate: GateResult | None) -> list[str]:
        """What an advance would change, in words (dry runs)."""
        s = self._s
        who = f"tenant {req.tenant}" if req.tenant else "the migration"
        out = [f"{who}: {frm} -> {to}; epoch {s.epoch} -> {s.epoch + 1} published to applications, then the "
               "phase barrier waits for every live instance"]
        if phases.reads_from(frm) != phases.reads_from(to):
            out.append(f"reads: served from the {phases.reads_from(to)} store")
        if phases.authoritative(frm) != phases.authoritative(to):
            out.append(f"writes: the {phases.authoritative(to)} store becomes authoritative (written first), "
                       f"the {phases.authoritative(frm)} store is kept in sync for rollback")
            if req.tenant is None and self._spec.strategy.value in ("triggers", "cdc") and not self._spec.tenant_tables:
                losing, gaining = phases.authoritative(frm), phases.authoritative(to)
                out.append(f"an application writing without the adapter: from the flip on, its writes to the "
                           f"{losing} store ({getattr(self._spec, losing)}) are REFUSED with an error naming the "
                           f"{gaining} store ({getattr(self._spec, gaining)}); point it there, where they are "
                           "accepted once the flip is published. Nothing it wrote before is lost: the "
                           f"{losing} store's key log is drained first")
        if req.tenant is None:
            following = sorted(t for t, p in self._tenant_phases().items() if p.rank <= to.rank)
            if following:
                out.append("tenants following the migration again: " + ", ".join(following))
        recon = next((m for m in gate.metrics if m.name == "reconciliation_gap"), None) if gate else None
        if recon is not None and recon.verdict.value == "not-yet":
            out.append("first: a compare-only verification (the last one is too old for the gate's window)")
        if to in phases.GATED and to is not Phase.CLEANUP:
            out.append(f"then: verify {'new -> old' if phases.verification_reverse(to) else 'old -> new'} "
                       "with repair")
        if to is Phase.CLEANUP:
            drop = req.drop_old_tables or s.cleanup_drop
            out.append("POINT OF NO RETURN: mirroring stops, capture triggers and key logs are removed, pending "
                       "repairs towards the old store are discarded; no rollback afterwards")
            for t in self._spec.tables:
                out.append(f"old table {t.source}: " + ("DROPPED" if drop else
                                                        f"renamed to {_retired_name(t.source, '<time>')}"))
        return out

    async def _rollback(self, req: TransitionRequest, *, kind: str = "rollback") -> TransitionResult:
        async with self._lock:
            s = self._s
            try:
                plan = phases.plan_rollback(self.view(req.tenant), req, kind)
            except phases.Rejected as exc:
                return self._result(False, str(exc), tenant=req.tenant)
            label = f"{_who(req.tenant)}rollback {plan.frm} -> {plan.to}"
            if req.dry_run:
                first = [f"verify new -> old{' for tenant ' + t if t else ''} with repair" for t in plan.verify_first]
                return self._result(True, f"dry run: {label} would be accepted"
                                    + (" after verifying new -> old" if plan.verify_first else ""),
                                    tenant=req.tenant, would=first)
            self._transitioning = label
            s.rolling_back = label + f" ({req.reason})"
            self._wake += 1
            try:
                if req.tenant is None:
                    was_done = s.phase_work_done
                    await self._cancel_work()
                else:
                    was_done = True
                    await self._cancel_tenant_work(req.tenant)
                if plan.verify_first:
                    # The old store becomes authoritative again: first make it hold every write the new store
                    # acknowledged (queued repairs first, then verify new -> old and repair what differs).
                    refused = await self._level_old_store(plan)
                    if refused:
                        if req.tenant is None and not was_done:
                            self._start_work()
                        return self._result(False, refused, tenant=req.tenant)
                refused = await self._fence_for(plan)
                if refused:
                    if req.tenant is None and not was_done:
                        self._start_work()
                    return self._result(False, refused, tenant=req.tenant)
                self._count("rollbacks")
                if kind == "auto-rollback":
                    self._count("auto_rollbacks")
                await self._enter(plan, by=req.by, reason=req.reason)
                await self._lift_denial(plan)
                held = self._hold_after_manual_rollback(plan, req, kind)
                return self._result(True, f"{label} (epoch {s.epoch}); waiting for the phase barrier{held}",
                                    tenant=req.tenant)
            finally:
                s.rolling_back = ""
                self._transitioning = ""

    async def _level_old_store(self, plan: phases.Plan) -> str:
        """Drain queued repairs, then verify new -> old with repair for each scope; '' when all are clean."""
        ts = self._tenant(plan.tenant)

        def note(text: str) -> None:
            if plan.tenant is None:
                self._s.work_state = text
            elif ts is not None:
                ts.work_state = text
            self._wake += 1

        note(f"rollback: catching up the old store ({plan.frm} -> {plan.to})")
        await self._drain_once()
        # outbox / triggers: writes the new store acknowledged wait in its key log until the relay mirrors
        # them; mirror everything logged up to now first, so the verification below compares settled rows
        # and only keys logged after this point (still in the log: in flight, mirrored by the relay) differ
        caught = await self._catch_up_logs("before the rollback", note)
        if caught is not None and not caught.reached:
            note("")
            self._count("rollbacks_refused")
            errors = f" ({'; '.join(caught.errors)})" if caught.errors else ""
            return (f"rollback refused: the key logs still hold {caught.behind} entries logged before the rollback "
                    f"after {caught.seconds:.0f} s of mirroring{errors}; the old store is not level, "
                    f"{'tenant ' + plan.tenant if plan.tenant else 'the migration'} stays in {plan.frm}")
        for scope in plan.verify_first:
            note(f"rollback: verifying new -> old{' for tenant ' + scope if scope else ''} before flipping "
                 "authority")
            try:
                summary = await self._run_verification(reverse=True, repair=True, reason="rollback", tenant=scope)
            except (ActivityError, ChildWorkflowError) as exc:
                if is_cancelled_exception(exc):
                    raise
                summary = VerificationSummary(at=workflow.now(), ok=False, rows_compared=0, direction="new->old",
                                              tenant=scope)
                workflow.logger.warning("rollback verification failed: %s", failure_message(exc))
            if not summary.ok:
                note("")
                self._count("rollbacks_refused")
                where = f"tenant {scope}'s rows" if scope else "the old store"
                return (f"rollback refused: {where} could not be brought level with the new store ("
                        + _verification_text(summary) + f"); {'tenant ' + scope if scope else 'the migration'} "
                        f"stays in {plan.frm}")
        note("")
        return ""

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
            to = phases.resolve_approve(self.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._result(False, str(exc), tenant=req.tenant)
        frm = self._phase_of(req.tenant)
        if req.dry_run:
            return self._result(True, f"dry run: approving {_who(req.tenant)}{frm} -> {to} would be accepted",
                                tenant=req.tenant)
        ts = self._tenant(req.tenant)
        if req.tenant is not None and ts is None:
            # a tenant that follows the migration gets its own entry once it moves; remember the approval
            ts = TenantState(tenant=req.tenant, phase=frm, entered_at=workflow.now())
            s.tenants.append(ts)
        if ts is not None:
            ts.approved_for = to
        else:
            s.approved_for = to
            if to is Phase.CLEANUP:
                s.cleanup_drop = req.drop_old_tables
        self._record(frm, frm, "approve", req.by, req.reason or f"approved {frm} -> {to}", tenant=req.tenant)
        self._gate_dirty = True
        self._wake += 1
        return self._result(True, f"approved {_who(req.tenant)}{frm} -> {to}", tenant=req.tenant)

    async def _hold(self, req: TransitionRequest) -> TransitionResult:
        s = self._s
        try:
            phases.check_hold(self.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._result(False, str(exc), tenant=req.tenant)
        scope = _scope(req.tenant)
        what = f"tenant {req.tenant}" if req.tenant else "the migration"
        if req.dry_run:
            return self._result(True, f"dry run: {'releasing' if req.release else 'holding'} {what} would be "
                                      "accepted", tenant=req.tenant)
        phase = self._phase_of(req.tenant)
        if req.release:
            s.holds.pop(scope, None)
            self._record(phase, phase, "release", req.by, req.reason or "hold released", tenant=req.tenant)
        else:
            s.holds[scope] = HoldState(by=req.by, reason=req.reason, at=workflow.now())
            self._record(phase, phase, "hold", req.by, req.reason, tenant=req.tenant)
        self._gate_dirty = True
        self._wake += 1
        return self._result(True, f"{what} {'released' if req.release else 'held'} in {phase}", tenant=req.tenant)

    def _hold_after_manual_rollback(self, plan: phases.Plan, req: TransitionRequest, kind: str) -> str:
        """Auto mode: an operator who rolled back wants the migration to stay there, not to re-advance in
        the same second (and rerun the backfill). Hold it until the operator releases the hold; automatic
        rollbacks place their own hold. Returns what to add to the result."""
        s = self._s
        if (kind != "rollback" or plan.tenant is not None or self._spec.mode.value != "auto"
                or phases.GLOBAL in s.holds or not workflow.patched(ROLLBACK_HOLDS_AUTO_PATCH)):
            return ""
        s.holds[phases.GLOBAL] = HoldState(
            by=req.by or "rollback", at=workflow.now(),
            reason=f"auto mode held after a manual rollback {plan.frm} -> {plan.to} ({req.reason}); "
                   f"`dualwrite hold {self._spec.name} --release` lets it advance again")
        self._record(plan.to, plan.to, "hold", req.by, "auto mode held after a manual rollback")
        return "; auto mode holds here until `hold --release`"

    async def _abort(self, req: TransitionRequest) -> TransitionResult:
        """Abandon the migration: authority back to the old store, then its capture, relay, children and control
        rows removed; the workflow completes. The old store's rows are never written here (a rollback out of
        CUTOVER_WRITES levels it first, as any rollback does); the new store keeps its data for the operator."""
        s = self._s
        self._aborting = True
        try:
            async with self._lock:
                try:
                    phases.check_abort(self.view(), req)
                except phases.Rejected as exc:
                    return self._result(False, str(exc))
                frm = s.phase
                self._transitioning = f"abort in {frm} ({req.reason})"
                self._wake += 1
                try:
                    return await self._abort_locked(req, frm)
                except (ActivityError, ChildWorkflowError) as exc:
                    if is_cancelled_exception(exc):
                        raise
                    s.work_state = f"abort stopped: {failure_message(exc)}; abort again to finish it"
                    return self._result(False, f"abort stopped in {s.phase}: {failure_message(exc)}; "
                                               "abort again to finish it")
                finally:
                    self._transitioning = ""
        finally:
            self._aborting = False

    async def _abort_locked(self, req: TransitionRequest, frm: Phase) -> TransitionResult:
        s = self._s
        was_done = s.phase_work_done
        await self._cancel_work()  # backfill and verification children are cancelled with their tasks
        live_seen = True
        levelled = False
        if frm is not Phase.PREPARE:
            plan = phases.plan_rollback(self.view(planning=True),
                                        TransitionRequest(to=Phase.PREPARE, reason=req.reason, by=req.by), "abort")
            levelled = bool(plan.verify_first)
            refused = await self._level_old_store(plan) if plan.verify_first else ""
            refused = refused or await self._fence_for(plan)
            if refused:
                if not was_done:
                    self._start_work()
                for kind in ("rollback refused", "advance refused"):
                    refused = refused.replace(kind, "abort refused", 1)
                return self._result(False, refused)
            await self._enter(plan, by=req.by, reason=req.reason)  # recorded as kind "abort"
            await self._cancel_work()  # PREPARE's entry work (the preflight) is not wanted: it never starts
            s.work_state = "abort: waiting for live instances to see the old store authoritative"
            self._wake += 1
            wait = self._tuning.barrier_poll_seconds
            barrier = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._spec.name, control_store=self._spec.control, phase=s.phase,
                             epoch=s.epoch, max_wait_seconds=wait),
                start_to_close_timeout=timedelta(seconds=wait + 120),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._tuning.heartbeat_timeout_seconds)),
                retry_policy=_RETRY, result_type=BarrierStatus, summary=f"abort barrier epoch {s.epoch}")
            live_seen = barrier.passed
        if self._spec.strategy.value != "sync":
            s.work_state = "abort: telling the relay to finish"
            self._wake += 1
            try:
                await workflow.get_external_workflow_handle(relay_workflow_id(self._spec.name)).signal(FINISH_SIGNAL)
            except Exception as exc:  # noqa: BLE001 - no relay running: nothing to finish
                workflow.logger.info("no relay to finish: %s", exc)
        s.work_state = "abort: removing triggers, key-log entries and control rows"
        self._wake += 1
        res = await workflow.execute_activity(
            ActivityNames.ABORT_CLEANUP, AbortCleanupInput(spec=self._spec, remove_state=live_seen),
            start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=timedelta(seconds=60),
            retry_policy=_RETRY, result_type=AbortCleanupResult, summary="abort: remove capture and control rows")
        removed = [f"{len(res.triggers_removed)} capture triggers"] if res.triggers_removed else []
        removed += [f"{res.log_entries_deleted} key-log entries", f"{res.repair_entries_deleted} queued repairs",
                    f"{res.control_rows_deleted} control rows"]
        untouched = ("brought level with the new store first (writes it acknowledged carried back), nothing else "
                     "written to it" if levelled else "its data untouched by the abort")
        message = (f"aborted in {frm}: the old store is authoritative, {untouched}; removed {', '.join(removed)}"
                   + ("; the relay was told to finish" if self._spec.strategy.value != "sync" else "")
                   + (("; the published state stays (PREPARE) because some live instances had not seen it yet: "
                       "they pick it up on their next read") if not live_seen else "")
                   + f". The new store's tables ({', '.join(t.target_table for t in self._spec.tables)}) and "
                   f"their data in {self._spec.new} are left as they are: drop or keep them yourself")
        s.phase_work_done, s.work_state, s.repair_queue_depth = True, "", 0
        s.aborted = AbortRecord(by=req.by, reason=req.reason, at=workflow.now(), from_phase=frm, message=message)
        if frm is Phase.PREPARE:  # else _enter recorded it
            self._record(frm, s.phase, "abort", req.by, req.reason)
        workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(ABORTED)])
        self._wake += 1
        return self._result(True, message)

    async def _request_verify(self, req: TransitionRequest) -> TransitionResult:
        try:
            phases.check_verify(self.view(req.tenant), req)
        except phases.Rejected as exc:
            return self._result(False, str(exc), tenant=req.tenant)
        if req.dry_run:
            return self._result(True, "dry run: a verification would start", tenant=req.tenant)
        if req.tenant is not None:
            self._verify = asyncio.create_task(self._verification_task(True, "on demand", tenant=req.tenant))
            self._count("verifications_requested")
            self._wake += 1
            return self._result(True, f"verification of tenant {req.tenant} started", tenant=req.tenant)
        self._s.verify_requested = True
        self._count("verifications_requested")
        self._wake += 1
        return self._result(True, "verification requested" + (
            "; it starts when the current phase work is done" if not self._s.phase_work_done else ""))

    async def _enter(self, plan: phases.Plan, *, by: str, reason: str) -> None:
        """Carry out a decided phase change (the caller holds the lock, checked the gate, levelled stores)."""
        s = self._s
        now = workflow.now()
        if plan.tenant is None:
            await self._cancel_work()
            s.phase = plan.to
            s.phase_entered_at = now
            s.phase_work_done = False
            s.approved_for = None
            s.work_state = "publishing"
            s.entered_by_rollback = plan.kind in ROLLBACK_KINDS
            keep = {t.tenant: t for t in s.tenants}
            s.tenants = [keep[t].model_copy(update={"phase": p, "work_done": True, "work_state": ""})
                         for t, p in plan.tenants_after.items() if t in keep]
            if plan.to.rank <= Phase.BACKFILL.rank:
                s.backfill_done = False
            if plan.to is Phase.BACKFILL:
                for t in s.tables:
                    t.rows_copied, t.percent, t.ranges_done, t.done, t.eta_seconds = 0, 0, 0, False, None
                s.backfill_percent_step = 0
                workflow.upsert_search_attributes([BACKFILL_PERCENT.value_set(0)])
            workflow.upsert_search_attributes([MIGRATION_PHASE.value_set(plan.to.value)])
            if phases.continuous_verification(plan.to) and self._spec.verify_interval_seconds > 0:
                if s.next_verify_at is None:
                    self._schedule_verification()
            else:
                s.next_verify_at = None
        else:
            await self._cancel_tenant_work(plan.tenant)
            ts = self._tenant(plan.tenant)
            if plan.tenant in plan.tenants_after:
                if ts is None:
                    ts = TenantState(tenant=plan.tenant, phase=plan.to)
                    s.tenants.append(ts)
                ts.phase, ts.entered_at, ts.work_done, ts.approved_for = plan.to, now, False, None
                ts.work_state = "publishing"
            else:
                s.tenants = [t for t in s.tenants if t.tenant != plan.tenant]
        s.epoch += 1
        self._record(plan.frm, plan.to, plan.kind, by, reason, tenant=plan.tenant, gate_passed=plan.gate_passed)
        await self._publish()
        if plan.tenant is None:
            self._start_work()
        else:
            self._start_tenant_work(plan.tenant, plan.to, s.epoch, after_rollback=plan.kind in ROLLBACK_KINDS)
        self._gate_dirty = True
        self._wake += 1

    def _record(self, frm: Phase, to: Phase, kind: str, by: str, reason: str, *, tenant: str | None = None,
                gate_passed: bool | None = None) -> None:
        s = self._s
        s.transitions.append(TransitionRecord(from_phase=frm, to_phase=to, at=workflow.now(), by=by,
                                              reason=reason, kind=kind, tenant=tenant, gate_passed=gate_passed))
        del s.transitions[:-MAX_TRANSITIONS_KEPT]
        workflow.logger.info("migration %s: %s%s %s -> %s by %s: %s", self._spec.name, _who(tenant), kind, frm, to,
                             by or "?", reason)

    def _result(self, ok: bool, message: str, *, tenant: str | None = None, gate: GateResult | None = None,
                would: list[str] | None = None) -> TransitionResult:
        return TransitionResult(ok=ok, phase=self._phase_of(tenant), epoch=self._s.epoch, message=message,
                                tenant=tenant, gate=gate, would=would or [])

    async def _publish(self) -> None:
        s = self._s
        await workflow.execute_activity(
            ActivityNames.PUBLISH_STATE,
            ControlInput(migration=self._spec.name, control_store=self._spec.control, phase=s.phase,
                         epoch=s.epoch, paused=s.paused, overrides=self._overrides()),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._short_heartbeat(),
            retry_policy=_RETRY, summary=f"publish {s.phase} epoch {s.epoch}")
        s.published_epoch = s.epoch

    def _overrides(self) -> dict[str, Any]:
        out = phases.overrides_for(self._s.phase, self._tenant_phases())
        if self._fence is not None:
            whole, tenants = self._fence
            out[FENCE_KEY] = {"all": True} if whole else {"tenants": sorted(tenants)}
        return out

    # =====================================================================================================
    # write fence

    def _fence_scope(self, plan: phases.Plan) -> tuple[bool, tuple[str, ...]] | None:
        """Who must be fenced for ``plan``: None when no scope's authoritative store changes."""
        if plan.tenant is not None:
            if phases.authoritative(plan.frm) == phases.authoritative(plan.to):
                return None
            return False, (plan.tenant,)
        s = self._s
        before, after = self._tenant_phases(), plan.tenants_after
        flips = phases.authoritative(s.phase) != phases.authoritative(plan.phase_after) or any(
            phases.authoritative(phases.effective_phase(s.phase, before, t))
            != phases.authoritative(phases.effective_phase(plan.phase_after, after, t))
            for t in sorted({*before, *after}))
        return (True, ()) if flips else None

    async def _fence_for(self, plan: phases.Plan) -> str:
        """Before authority moves: fence the writes of the scopes that flip, wait until every live instance
        has acknowledged the fence with nothing routed before it still open, and drain the repair queue and
        the key logs. '' when the flip may go ahead (the fence stays until ``_enter`` publishes the new
        authority without it); else the fence is lifted under the old authority and the refusal returned."""
        scope = self._fence_scope(plan)
        if scope is None or not workflow.patched(WRITE_FENCE_PATCH):
            return ""
        s = self._s
        ts = self._tenant(plan.tenant)
        who = f"tenant {plan.tenant}" if plan.tenant is not None else "the migration"

        def note(text: str) -> None:
            if plan.tenant is None:
                s.work_state = text
            elif ts is not None:
                ts.work_state = text
            self._wake += 1

        self._count("write_fences")
        self._fence = scope
        s.epoch += 1
        note(f"write fence: writes of {who} held while authority moves ({plan.frm} -> {plan.to})")
        await self._publish()
        refused = ""
        denied_losing = False
        captured_gaining = False
        try:
            wait = self._tuning.fence_barrier_seconds
            status = await workflow.execute_activity(
                ActivityNames.AWAIT_BARRIER,
                ControlInput(migration=self._spec.name, control_store=self._spec.control, phase=s.phase,
                             epoch=s.epoch, max_wait_seconds=wait, poll_seconds=0.05),
                start_to_close_timeout=timedelta(seconds=wait + 60),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._tuning.heartbeat_timeout_seconds)),
                retry_policy=_RETRY, result_type=BarrierStatus, summary=f"write fence barrier epoch {s.epoch}")
            if not status.passed:
                refused = (f"{len(status.lagging)} of {status.live_instances} live instances did not acknowledge "
                           f"the write fence (epoch {s.epoch}) within {wait:g} s ("
                           f"{', '.join(status.lagging[:5])})")
            else:
                losing = phases.authoritative(plan.frm)
                if await self._deny_writes(deny=[losing], allow=[], authoritative=phases.authoritative(plan.to)):
                    denied_losing = True
                    note(f"write fence: the {losing} store refuses writes that bypass dualwrite; draining its "
                         f"key log ({plan.frm} -> {plan.to})")
                if plan.tenant is None and await self._bypass_capture(install=[phases.authoritative(plan.to)]):
                    captured_gaining = True  # raw writes to the gaining store are seen from its first write
                note(f"write fence: draining the repair queue ({plan.frm} -> {plan.to})")
                await self._drain_once(max_seconds=self._tuning.fence_drain_seconds, under_fence=True)
                caught = await self._catch_up_logs("under the write fence", note,
                                                   max_seconds=self._tuning.fence_drain_seconds,
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
            self._fence = None  # _enter publishes the new authority without it
            return ""
        self._fence = None
        if denied_losing:
            await self._deny_writes(deny=[], allow=[phases.authoritative(plan.frm)])
        if captured_gaining:
            await self._bypass_capture(remove=[phases.authoritative(plan.to)])
        s.epoch += 1
        await self._publish()
        note("")
        self._count("write_fences_refused")
        kind = "rollback" if plan.kind in ROLLBACK_KINDS else "advance"
        return (f"{kind} refused: {refused}; the write fence was lifted, {who} stays in {plan.frm} with the "
                f"{phases.authoritative(plan.frm)} store authoritative")

    # =====================================================================================================
    # gates

    async def _gate(self, to: Phase, tenant: str | None, label: str, *, dry_run: bool) -> GateResult:
        """Evaluate the gate into ``to``. When everything but a stale reconciliation passes, verify first
        (compare only, so the evidence names what differs) and evaluate again: a full verification is only
        paid for when it can decide the gate."""
        s = self._s
        ts = self._tenant(tenant)
        phase = self._phase_of(tenant)
        v = ts.last_verification if ts is not None else (None if tenant is not None else s.last_verification)
        direction = "new->old" if phases.verification_reverse(phase) else "old->new"
        result = await self._evaluate_gate(to, tenant, v, label, dry_run=dry_run)
        recon = next((m for m in result.metrics if m.name == "reconciliation_gap"), None)
        stale = recon is not None and recon.verdict.value == "not-yet"
        others_pass = all(m.ok for m in result.metrics if m.name != "reconciliation_gap")
        if stale and others_pass and not dry_run:
            self._transitioning = f"{label} (verifying {direction} for the gate)"
            self._wake += 1
            try:
                v = await self._run_verification(reverse=direction == "new->old", repair=False, reason="gate",
                                                 tenant=tenant)
            except (ActivityError, ChildWorkflowError) as exc:
                if is_cancelled_exception(exc):
                    raise
                workflow.logger.warning("gate verification failed: %s", failure_message(exc))
            result = await self._evaluate_gate(to, tenant, v, label, dry_run=dry_run)
        self._transitioning = label
        if not dry_run:
            if ts is not None:
                ts.gate = result.model_dump(mode="json")
            elif tenant is None:
                s.gate = result.model_dump(mode="json")
                self._gate_dirty = False
                self._gate_checked_at = workflow.now()
        return result

    async def _evaluate_gate(self, to: Phase, tenant: str | None, v: VerificationSummary | None, label: str, *,
                             dry_run: bool) -> GateResult:
        s = self._s
        ts = self._tenant(tenant)
        phase = self._phase_of(tenant)
        self._transitioning = f"{label} (evaluating the gate)"
        self._wake += 1
        if (self._spec.strategy.value == "triggers" and to in phases.TRAFFIC_GATED
                and workflow.patched(WORKER_SAMPLE_PATCH)):
            await self._worker_shadow_sample(label)
        bypass_gated = (to in phases.TRAFFIC_GATED and tenant is None and bp.applies(self._spec)
                        and workflow.patched(bp.BYPASS_PATCH))
        if bypass_gated:
            await self._collect_bypass()
        percent = 100 if s.backfill_done else min((t.percent for t in s.tables), default=0)
        approved = (ts.approved_for if ts is not None else (None if tenant is not None else s.approved_for)) is to
        result: GateResult = await workflow.execute_activity(
            ActivityNames.EVALUATE_GATE,
            GateInput(spec=self._spec, phase=phase, to=to, backfill_percent=percent,
                      backfill_done=s.backfill_done, last_verification=v, phase_entered_at=s.phase_entered_at,
                      repair_queue_depth=s.repair_queue_depth, approved=approved, tenant=tenant,
                      at=workflow.now()),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._short_heartbeat(),
            retry_policy=_RETRY, result_type=GateResult,
            summary=f"gate {_who(tenant)}{phase} -> {to}{' (dry run)' if dry_run else ''}")
        self._count("gate_evaluations")
        if bypass_gated:
            window = self._spec.gates.window_seconds
            metric = bp.gate_metric(s.bypass, workflow.now() - timedelta(seconds=window), window)
            result.metrics.append(metric)
            result.checks[metric.name] = metric.ok
            result.evidence[metric.name] = [g.model_dump(mode="json") for g in
                                            bp.in_window(s.bypass, workflow.now() - timedelta(seconds=window))]
            if not metric.ok:
                result.passed = False
                result.reasons.append(metric.detail)
        return result

    # =====================================================================================================
    # bypass capture (adapter strategies): writes that did not come through the adapter

    async def _bypass_capture(self, *, install: list[str] | None = None, remove: list[str] | None = None,
                              discard: bool = False) -> bool:
        """Install / remove bypass capture on store sides; False when it does not apply to this migration."""
        if not bp.applies(self._spec) or not workflow.patched(bp.BYPASS_PATCH):
            return False
        s = self._s
        on = {x for x in (s.bypass.capture_on if s.bypass is not None else "").split("+") if x}
        on = (on | set(install or [])) - set(remove or [])
        await workflow.execute_activity(
            bp.BYPASS_CAPTURE, bp.BypassCaptureInput(spec=self._spec, install=install or [], remove=remove or [],
                                                     discard=discard),
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._short_heartbeat(),
            retry_policy=_RETRY, summary=f"bypass capture on {'+'.join(install or []) or '-'}; off on "
                                         f"{'+'.join(remove or []) or '-'}")
        # re-read: a collection may have merged counts while the activity ran
        s.bypass = (s.bypass or bp.BypassSummary()).model_copy(update={"capture_on": "+".join(sorted(on))})
        return True

    async def _bypass_capture_for(self, phase: Phase) -> None:
        """Capture on the authoritative store from DUAL_WRITE to CUTOVER_WRITES; nowhere before or after (a
        rollback to PREPARE, CLEANUP). Idempotent; nothing is called when capture is already as wanted."""
        s = self._s
        current = s.bypass.capture_on if s.bypass is not None else ""
        if phases.secondary_is_mirrored(phase):
            side = phases.authoritative(phase)
            if current != side:
                await self._bypass_capture(install=[side], remove=["new" if side == "old" else "old"])
        elif current:
            await self._bypass_capture(remove=["old", "new"], discard=True)

    async def _collect_bypass(self) -> None:
        """Collect the bypass records: counts per (table, writer) into the state, keys into the repair queue.
        A failed collection leaves the counts as they were (the records wait for the next one)."""
        s = self._s
        if s.bypass is None or not s.bypass.capture_on or not workflow.patched(bp.BYPASS_PATCH):
            return
        try:
            res: bp.BypassCollectResult = await workflow.execute_activity(
                bp.BYPASS_COLLECT, bp.BypassCollectInput(spec=self._spec),
                start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=self._short_heartbeat(),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
                result_type=bp.BypassCollectResult, summary="collect bypassed writes")
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("bypass collection failed: %s", failure_message(exc))
            return
        if res.groups:
            s.bypass = bp.merge(s.bypass or bp.BypassSummary(), res.groups)
            self._count("bypassed_writes", res.queued)
            s.repair_queue_depth += res.queued
            self._gate_dirty = True
            self._wake += 1

    async def _worker_shadow_sample(self, label: str) -> None:
        """triggers: no adapter reads both stores, so the worker samples rows itself before the gate reads the
        statistics (its verdicts land in them, named as a worker shadow sample). A failed sample only leaves
        the gate with fewer samples ("not yet"), never a pass."""
        self._transitioning = f"{label} (worker shadow sample)"
        self._wake += 1
        try:
            res: ShadowSampleResult = await workflow.execute_activity(
                SAMPLE_SHADOW, ShadowSampleInput(spec=self._spec),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._tuning.heartbeat_timeout_seconds)),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2),
                result_type=ShadowSampleResult, summary="worker shadow sample")
            self._count("worker_shadow_samples", res.compared)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("worker shadow sample failed: %s", failure_message(exc))

    async def _maybe_auto_advance(self) -> None:
        if self._spec.mode.value != "auto" or self._lock.locked():
            return
        view = self.view()
        to, _why = phases.auto_target(view)
        if to is None:
            return
        if to in phases.GATED:
            due = self._gate_dirty or self._gate_checked_at is None or (
                workflow.now() - self._gate_checked_at).total_seconds() >= self._tuning.gate_recheck_seconds
            if not due:
                return
        s = self._s
        if to is Phase.CLEANUP:
            confirmed_by = "the spec (auto_cleanup)" if self._spec.auto_cleanup and s.approved_for is not to \
                else "an approval"
            req = TransitionRequest(to=to, by="auto", reason=f"phase work done, gate passed; CLEANUP confirmed by "
                                    f"{confirmed_by}", confirm_cleanup=True, drop_old_tables=s.cleanup_drop,
                                    confirm_drop=self._spec.name if s.cleanup_drop else "")
        else:
            req = TransitionRequest(to=to, by="auto", reason="phase work done, gate passed")
        await self._advance(req, kind="auto")

    # =====================================================================================================
    # automatic rollback triggers

    def _monitor_scopes(self) -> list[TriggerScope]:
        """What the triggers watch now: the migration and every tenant in a CUTOVER_* whose barrier passed."""
        s = self._s
        out: list[TriggerScope] = []
        if s.phase in phases.TRIGGERED and s.phase_work_done and s.phase_entered_at is not None:
            out.append(TriggerScope(tenant=None, phase=s.phase, since=s.phase_entered_at))
        for ts in s.tenants:
            if ts.phase in phases.TRIGGERED and ts.work_done and ts.entered_at is not None \
                    and ts.phase.rank > s.phase.rank:
                out.append(TriggerScope(tenant=ts.tenant, phase=ts.phase, since=ts.entered_at))
        return out

    def _watch_ended(self, watch: asyncio.Task[Any], key: tuple[Any, ...]) -> Callable[[], bool]:
        return lambda: watch.done() or self._monitor_key() != key or self._drain_stop

    def _monitor_key(self) -> tuple[Any, ...]:
        return (self._s.epoch, bool(self._transitioning), tuple((x.tenant, x.phase) for x in self._monitor_scopes()))

    async def _monitor_loop(self) -> None:
        cfg = self._spec.rollback_triggers
        if not cfg.enabled:
            return
        while not self._drain_stop:
            await workflow.wait_condition(
                lambda: bool(self._monitor_scopes()) and not self._transitioning or self._drain_stop
                or self._s.phase is Phase.DONE)
            if self._drain_stop or self._s.phase is Phase.DONE:
                return
            key = self._monitor_key()
            watch = asyncio.create_task(workflow.execute_activity(
                ActivityNames.WATCH_TRIGGERS,
                TriggerWatchInput(spec=self._spec, scopes=self._monitor_scopes(),
                                  max_seconds=max(TRIGGER_WATCH_SECONDS, cfg.check_seconds * 3)),
                start_to_close_timeout=timedelta(seconds=max(TRIGGER_WATCH_SECONDS, cfg.check_seconds * 3) + 300),
                heartbeat_timeout=self._short_heartbeat(),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                task_queue=poller_task_queue(workflow.info().task_queue),
                retry_policy=_RETRY, result_type=TriggerWatchResult, summary="watch rollback triggers"))
            try:
                await workflow.wait_condition(self._watch_ended(watch, key))
            finally:
                if not watch.done():
                    watch.cancel()
            try:
                res = await watch
            except (ActivityError, asyncio.CancelledError) as exc:
                if self._drain_stop or self._monitor_key() != key:
                    continue
                if isinstance(exc, asyncio.CancelledError) or is_cancelled_exception(exc):
                    raise
                workflow.logger.warning("rollback trigger watch failed: %s", failure_message(exc))
                await workflow.sleep(timedelta(seconds=30))
                continue
            if res.evaluation is not None:
                self._s.triggers = res.evaluation
                self._wake += 1
            if res.tripped and self._monitor_key() == key and not self._drain_stop:
                await self._auto_rollback(res)

    async def _auto_rollback(self, res: TriggerWatchResult) -> None:
        """Roll back one step by itself, record why, and hold there until an operator releases it."""
        s = self._s
        why = res.evaluation.reason if res.evaluation is not None else "a rollback trigger tripped"
        req = TransitionRequest(tenant=res.tenant, reason=f"automatic rollback: {why}", by="auto-rollback")
        workflow.logger.warning("migration %s: %sautomatic rollback from %s: %s", self._spec.name, _who(res.tenant),
                                res.phase, why)
        result = await self._rollback(req, kind="auto-rollback")
        if not result.ok:
            self._count("auto_rollbacks_refused")
            self._last_signal_rejection = f"automatic rollback refused: {result.message}"
            await workflow.sleep(timedelta(seconds=max(5.0, self._spec.rollback_triggers.check_seconds)))
            return
        scope = _scope(res.tenant)
        if scope not in s.holds:
            s.holds[scope] = HoldState(by="auto-rollback", reason=f"rolled back from {res.phase}: {why}",
                                       at=workflow.now())
            phase = self._phase_of(res.tenant)
            self._record(phase, phase, "hold", "auto-rollback", "held after an automatic rollback; release it "
                         "when the cause is fixed", tenant=res.tenant)
        self._wake += 1

    # =====================================================================================================
    # phase entry work

    def _start_work(self) -> None:
        self._work = asyncio.create_task(self._phase_work(self._s.phase, self._s.epoch))

    async def _cancel_work(self) -> None:
        for task in (self._work, self._verify, *self._tenant_work.values()):
            if task is not None:
                await _cancel(task)
        self._work = None
        self._verify = None
        self._tenant_work = {}
        for ts in self._s.tenants:
            ts.work_done, ts.work_state = True, ""
        self._backfill_children = []

    async def _cancel_tenant_work(self, tenant: str) -> None:
        task = self._tenant_work.pop(tenant, None)
        if task is not None:
            await _cancel(task)

    async def _phase_work(self, phase: Phase, epoch: int) -> None:
        s = self._s
        try:
            if phase is Phase.PREPARE:
                s.work_state = "preflight"
                self._wake += 1
                prep = await workflow.execute_activity(
                    ActivityNames.PREPARE, PrepareInput(spec=self._spec),
                    start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=self._short_heartbeat(),
                    retry_policy=_RETRY, result_type=PrepareResult, summary="preflight")
                for t in s.tables:
                    for p in prep.tables:
                        if p.source == t.source:
                            t.rows_estimate = p.rows_estimate
                await self._ensure_relay()
            if phase is not Phase.CLEANUP and phase is not Phase.DONE:
                side = phases.authoritative(phase)
                await self._deny_writes(deny=["new" if side == "old" else "old"], allow=[], authoritative=side)
            await self._bypass_capture_for(phase)
            if s.published_epoch < epoch:
                await self._publish()
            await self._barrier(epoch, self._set_work_state)
            if phase is Phase.BACKFILL:
                await self._backfill()
                s.work_state = "verifying after backfill"
                self._wake += 1
                await self._run_verification(reverse=False, repair=True, reason="after backfill")
                s.backfill_done = True
            elif phase in (Phase.SHADOW_READ, Phase.CUTOVER_READS, Phase.CUTOVER_WRITES):
                if s.entered_by_rollback:
                    # writes acknowledged under the previous authority during the barrier may wait in the
                    # repair queue: mirror them before a repairing verification could overwrite them
                    s.work_state = "draining the repair queue after the rollback"
                    self._wake += 1
                    await self._drain_once()
                await self._catch_up_logs(f"entering {phase}", self._set_work_state)
                s.work_state = f"verifying on entering {phase}"
                self._wake += 1
                await self._run_verification(reverse=phases.verification_reverse(phase), repair=True,
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
            self._count("phase_work_failures")
            workflow.logger.error("migration %s: %s work failed: %s", self._spec.name, phase, msg)
            if phase is Phase.PREPARE and epoch == 1:
                self._fatal = ApplicationError(f"PREPARE failed: {msg}", type="PreflightFailed",
                                               non_retryable=True)
        finally:
            self._gate_dirty = True
            self._wake += 1

    def _set_work_state(self, text: str) -> None:
        self._s.work_state = text

    def _start_tenant_work(self, tenant: str, phase: Phase, epoch: int, *, after_rollback: bool = False) -> None:
        self._tenant_work[tenant] = asyncio.create_task(self._tenant_phase_work(tenant, phase, epoch,
                                                                                after_rollback))

    async def _tenant_phase_work(self, tenant: str, phase: Phase, epoch: int, after_rollback: bool) -> None:
        """A tenant's entry work: the barrier, then a verification of its rows in its authority's direction."""

        def note(text: str) -> None:
            ts = self._tenant(tenant)
            if ts is not None:
                ts.work_state = text
            self._wake += 1

        try:
            await self._barrier(epoch, note)
            if after_rollback:
                note("draining the repair queue after the rollback")
                await self._drain_once()
                await self._catch_up_logs(f"tenant {tenant} entering {phase}", note)
            note(f"verifying tenant {tenant} on entering {phase}")
            await self._run_verification(reverse=phases.verification_reverse(phase), repair=True,
                                         reason=f"tenant {tenant} entering {phase}", tenant=tenant)
            note("")
        except (ActivityError, ChildWorkflowError, ApplicationError) as exc:
            if is_cancelled_exception(exc):
                raise
            note(f"{phase} work failed: {failure_message(exc)}")
            self._count("phase_work_failures")
        finally:
            ts = self._tenant(tenant)
            if ts is not None and ts.phase is phase:
                ts.work_done = True
            self._gate_dirty = True
            self._wake += 1

    async def _barrier(self, epoch: int, note: Callable[[str], None]) -> None:
        s = self._s
        note(f"barrier: waiting for live instances to see epoch {epoch}")
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
            note(f"barrier: {len(status.lagging)} of {status.live_instances} live instances have "
                 f"not seen epoch {epoch} ({', '.join(status.lagging[:5])})")
            self._wake += 1

    def _short_heartbeat(self) -> timedelta:
        """For activities that heartbeat from a background thread while they work (preflight, publish,
        gate, retire): a killed worker costs this long, not the start-to-close timeout."""
        return timedelta(seconds=min(30.0, self._tuning.heartbeat_timeout_seconds))

    async def _drain_once(self, max_seconds: float = 120, *, under_fence: bool = False) -> None:
        """Mirror what the repair queue holds right now (a one-shot drain beside the background one)."""
        res = await workflow.execute_activity(
            ActivityNames.DRAIN_REPAIRS,
            RepairDrainInput(spec=self._spec, max_idle_seconds=0, max_seconds=max_seconds, under_fence=under_fence),
            start_to_close_timeout=timedelta(seconds=600),
            heartbeat_timeout=timedelta(seconds=min(30.0, max(10.0, self._tuning.heartbeat_timeout_seconds))),
            retry_policy=_RETRY, result_type=RepairDrainResult, summary="drain repairs now")
        self._s.repair_queue_depth = res.remaining
        self._count("repair_mirrored", res.mirrored)
        self._count("repair_failed", res.failed)

    async def _ensure_relay(self) -> None:
        """outbox / triggers: make sure the migration's RelayWorkflow runs, whoever started the migration (the
        CLI, the Web UI, a script), before applications write key logs (from DUAL_WRITE on).

        It is a child with a fixed id (one relay per migration, whatever the number of starts) that outlives
        this run (ABANDON: continue-as-new and the end of the migration leave it alone; CLEANUP tells it to
        finish). A relay already running under that id, e.g. one a bench started with its own tuning, is the
        relay: "already started" is success. Starting it after the preflight means a bad spec writes nothing
        (for ``triggers`` its setup installs the capture triggers)."""
        if self._spec.strategy.inline or not workflow.patched(RELAY_AUTOSTART_PATCH):
            return
        spec = self._spec
        self._s.work_state = "starting the relay"
        self._wake += 1
        try:
            handle = await workflow.start_child_workflow(
                RelayWorkflow.run,
                RelayInput(spec=spec, heartbeat_timeout_seconds=self._tuning.heartbeat_timeout_seconds,
                           drain_task_queue=poller_task_queue(workflow.info().task_queue)),
                id=relay_workflow_id(spec.name), parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"relay {spec.name}: {spec.strategy.value} key logs, {spec.old} ⇄ {spec.new}")
        except WorkflowAlreadyStartedError:
            self._count("relay_already_running")
            workflow.logger.info("migration %s: relay %s already running", spec.name, relay_workflow_id(spec.name))
            return
        handle.add_done_callback(_relay_ended)
        self._count("relay_started")

    async def _catch_up_logs(self, why: str, note: Callable[[str], None],
                             max_seconds: float = CATCH_UP_SECONDS,
                             authoritative: str | None = None) -> CatchUpResult | None:
        """outbox / triggers: mirror every key-log entry logged so far (its drain point), whether the relay
        or this activity gets to it first. None for ``sync`` (no key logs) and in histories from before."""
        if self._spec.strategy.inline or not workflow.patched(CATCH_UP_PATCH):
            return None
        note(f"mirroring the key logs up to now ({why})")
        self._wake += 1
        res: CatchUpResult = await workflow.execute_activity(
            RELAY_CATCH_UP, CatchUpInput(spec=self._spec, max_seconds=max_seconds,
                                         authoritative=self._denied_log_side(authoritative)),
            start_to_close_timeout=timedelta(seconds=max_seconds + 300),
            heartbeat_timeout=timedelta(seconds=max(10.0, self._tuning.heartbeat_timeout_seconds)),
            retry_policy=_RETRY, result_type=CatchUpResult, summary=f"catch up the key logs ({why})")
        self._count("key_log_caught_up", res.counters.mirrored)
        if not res.reached:
            workflow.logger.warning("migration %s: %d key-log entries still behind after catching up (%s)",
                                    self._spec.name, res.behind, why)
        return res

    def _denies_writes(self) -> bool:
        """``triggers`` / ``cdc`` without tenants: the store that is not authoritative refuses writes that bypass
        dualwrite (Vitess's denied tables), so no write it acknowledged can be overwritten by a mirror."""
        return (self._spec.strategy.value in ("triggers", "cdc") and not self._spec.tenant_tables
                and workflow.patched(DENY_WRITES_PATCH))

    def _denied_log_side(self, authoritative: str | None) -> str:
        """The key log a catch-up mirrors: only the authoritative store's when writes are denied on the other."""
        if not self._denies_writes():
            return ""
        return authoritative or phases.authoritative(self._s.phase)

    async def _deny_writes(self, *, deny: list[str], allow: list[str], authoritative: str = "new") -> bool:
        """Install (``deny``) or lift (``allow``) the denied-writes triggers; False when they do not apply."""
        if not self._denies_writes():
            return False
        await workflow.execute_activity(
            RELAY_DENY, DenyWritesInput(spec=self._spec, deny=deny, allow=allow, authoritative=authoritative),
            start_to_close_timeout=timedelta(minutes=1), retry_policy=_RETRY,
            summary=f"deny writes on {', '.join(deny) or '-'}; allow on {', '.join(allow) or '-'}")
        return True

    async def _lift_denial(self, plan: phases.Plan) -> None:
        """After a flip is published: the store that gained authority accepts the application's writes."""
        if plan.tenant is None and phases.authoritative(plan.frm) != phases.authoritative(plan.to):
            gaining = phases.authoritative(plan.to)
            if await self._deny_writes(deny=[], allow=[gaining]):
                self._count("denied_writes_lifted")

    async def _retire_old_store(self) -> None:
        """CLEANUP (applications stopped mirroring at the barrier): finish the relay, remove capture and key
        logs, discard repairs towards the old store, and rename (or drop) the old tables."""
        s = self._s
        if not self._spec.strategy.inline:
            s.work_state = "cleanup: telling the relay to finish"
            self._wake += 1
            try:
                await workflow.get_external_workflow_handle(relay_workflow_id(self._spec.name)).signal(FINISH_SIGNAL)
            except Exception as exc:  # noqa: BLE001 - no relay running: nothing to finish
                workflow.logger.info("no relay to finish: %s", exc)
        s.work_state = "cleanup: " + ("dropping" if s.cleanup_drop else "renaming") + " the old tables"
        self._wake += 1
        entered = s.phase_entered_at or workflow.now()
        res = await workflow.execute_activity(
            ActivityNames.RETIRE_OLD, RetireInput(spec=self._spec, drop=s.cleanup_drop,
                                                  stamp=entered.strftime("%Y%m%d%H%M%S")),
            start_to_close_timeout=timedelta(minutes=30), heartbeat_timeout=self._short_heartbeat(),
            retry_policy=_RETRY, result_type=RetireResult,
            summary="retire the old store")
        s.retirement = res
        s.repair_queue_depth = 0
        self._record(s.phase, s.phase, "cleanup", "workflow",
                     "; ".join(f"{t.source} {t.action}" + (f" as {t.retired_as}" if t.retired_as else "")
                               for t in res.tables))

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

    async def _verification_task(self, repair: bool, reason: str, tenant: str | None = None) -> None:
        try:
            await self._run_verification(reverse=phases.verification_reverse(self._phase_of(tenant)), repair=repair,
                                         reason=reason, tenant=tenant)
        except (ActivityError, ChildWorkflowError) as exc:
            if is_cancelled_exception(exc):
                raise
            self._s.work_state = f"verification failed: {failure_message(exc)}"
        finally:
            self._gate_dirty = True
            self._wake += 1

    async def _run_verification(self, *, reverse: bool, repair: bool, reason: str,
                                tenant: str | None = None) -> VerificationSummary:
        """Run a VerificationWorkflow child; a tenant's verification covers its rows of the tenant tables."""
        s = self._s
        s.verify_runs += 1
        direction = "new->old" if reverse else "old->new"
        tables = [t.source for t in self._spec.tenant_tables] if tenant is not None else None
        # a migration-wide verification leaves alone the rows of tenants whose authority runs the other way
        # (it would "repair" their acknowledged writes away); their own verifications cover them
        side = "new" if reverse else "old"
        exclude = [] if tenant is not None else sorted(
            t for t, p in self._tenant_phases().items() if p.rank > s.phase.rank and phases.authoritative(p) != side)
        summary: VerificationSummary = await workflow.execute_child_workflow(
            VerificationWorkflow.run,
            VerifyInput(spec=self._spec, reverse=reverse, repair=repair, reason=reason, tuning=self._tuning,
                        tenant=tenant, tables=tables, exclude_tenants=exclude),
            id=f"{workflow.info().workflow_id}-verify-{s.verify_runs}",
            static_summary=f"verify {self._spec.name} {direction}{' tenant ' + tenant if tenant else ''} ({reason})",
        )
        ts = self._tenant(tenant)
        if tenant is None:
            s.last_verification = summary
        elif ts is not None:
            ts.last_verification = summary
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
                    lambda: phases.secondary_is_mirrored(s.phase) or s.phase is Phase.DONE or self._drain_stop)
                if s.phase is Phase.DONE or self._drain_stop:
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
                    task_queue=poller_task_queue(workflow.info().task_queue),
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
            if bp.applies(self._spec):
                await self._collect_bypass()

    # =====================================================================================================
    # presentation

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self._s.counters[name] = self._s.counters.get(name, 0) + n

    def _waiting_for(self) -> str:
        s = self._s
        if self._fatal is not None:
            return f"nothing: failed ({self._fatal})"
        if (s.phase is Phase.DONE and s.phase_work_done) or s.aborted is not None:
            return ""
        if s.rolling_back:
            return f"transition: {s.rolling_back}" + (f" — {s.work_state}" if s.work_state else "")
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
        if not why.startswith("operator: held") and s.holds.get(phases.GLOBAL) is not None:
            return f"operator: held ({self._hold_text(None)}); release the hold to advance{note}"
        return why + note

    def _render(self) -> None:
        s = self._s
        if s.aborted is not None:
            a = s.aborted
            workflow.set_current_details(f"**{self._spec.name}**: **ABORTED** in {a.from_phase} by {a.by or '?'}: "
                                         f"{a.reason}\n\n{a.message}")
            return
        lines = [f"**{self._spec.name}**: {self._spec.old} → {self._spec.new} · phase **{s.phase}** "
                 f"(epoch {s.epoch}){' · **PAUSED**' if s.paused else ''}"
                 f"{' · **HELD**' if s.holds.get(phases.GLOBAL) else ''} · {self._spec.mode.value} mode",
                 "", f"waiting for: {self._waiting_for() or '–'}", ""]
        if s.rolling_back:
            lines += [f"⏪ rolling back: {s.rolling_back}", ""]
        hold = s.holds.get(phases.GLOBAL)
        if hold is not None:
            lines += [f"✋ held by {hold.by or '?'}: {hold.reason}", ""]
        lines += ["| table | rows copied | estimate | % | ranges | ETA |", "|---|---:|---:|---:|---:|---:|"]
        for t in s.tables:
            eta = "–" if t.eta_seconds is None else f"{t.eta_seconds:.0f} s"
            lines.append(f"| {t.source} → {t.target} | {t.rows_copied:,} | {t.rows_estimate:,} | {t.percent} | "
                         f"{t.ranges_done}/{t.ranges_total} | {eta} |")
        v = s.last_verification
        if v is not None:
            lines += ["", f"last verification {v.direction} at {v.at:%Y-%m-%d %H:%M:%S}Z: "
                          f"{v.verdict}, {v.rows_compared:,} rows, "
                          f"missing {v.missing}, extra {v.extra}, field-different {v.field_different}, "
                          f"repaired {v.repaired}"]
        lines += ["", f"repair queue: {s.repair_queue_depth}"]
        if s.gate and s.gate.get("metrics"):
            lines += ["", f"**gate → {s.gate.get('to')}: {'PASSED' if s.gate.get('passed') else 'not passed'}**",
                      "", "| metric | value | threshold | samples | verdict |", "|---|---:|---:|---:|:-:|"]
            for m in s.gate["metrics"]:
                lines.append(f"| {m['name']} | {_fmt(m.get('value'))} | {m.get('op', '')} {_fmt(m.get('threshold'))} "
                             f"| {m.get('samples', 0):,} / {m.get('min_samples', 0):,} | {m.get('verdict')} |")
        if s.triggers is not None and s.triggers.metrics:
            lines += ["", "rollback triggers: " + ", ".join(
                f"{m.name} {_fmt(m.value)} ({m.verdict.value})" for m in s.triggers.metrics)]
        rows = self._tenant_rows()
        if rows:
            lines += ["", "| tenant | phase | own | authoritative | reads | gate | hold |",
                      "|---|---|:-:|---|---|:-:|---|"]
            for r in rows:
                gate = "–" if r.gate_passed is None else "✅" if r.gate_passed else "❌"
                held = f"{r.hold.by}: {r.hold.reason}" if r.hold else ""
                lines.append(f"| {r.tenant} | {r.phase} | {'✓' if r.own else ''} | {r.authoritative} | "
                             f"{r.reads_from} | {gate} | {held} |")
        if s.retirement is not None:
            lines += ["", "retired: " + ", ".join(
                f"{t.source} ({t.action}{' as ' + t.retired_as if t.retired_as else ''})" for t in s.retirement.tables)]
        if self._last_signal_rejection:
            lines += ["", f"⚠ {self._last_signal_rejection}"]
        workflow.set_current_details("\n".join(lines))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and 0 < abs(value) < 1:
        return f"{value * 100:.3g}%"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _retired_name(table: str, stamp: str) -> str:
    """How CLEANUP renames an old table (shown by dry runs; the activity computes the real one)."""
    return f"{table.rpartition('.')[2]}_dw_retired_{stamp}"


def _relay_ended(handle: asyncio.Future[Any]) -> None:
    """The relay this run started has ended (finished at CLEANUP, or terminated): note how, no more."""
    if handle.cancelled():
        return
    exc = handle.exception()
    if exc is not None:
        workflow.logger.warning("relay ended: %s", failure_message(exc))


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
    repaired = f", {v.repaired} repaired in the {v.repaired_into} store" if v.repaired else ""
    return (f"{v.verdict} ({v.direction}: {v.rows_compared} rows compared, missing {v.missing}, extra {v.extra}, "
            f"field-different {v.field_different}{repaired})" + (f"; {errors}" if errors else ""))

