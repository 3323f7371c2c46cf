"""RelayWorkflow: one per migration with the ``outbox``, ``triggers`` or ``cdc`` strategy (id
``dualwrite-<name>-relay``; with ``cdc`` its activities read the databases' own logs, see
``activities/cdc_relay.py``).

``MigrationWorkflow`` starts it at PREPARE (a child that outlives it) unless one already runs under that id,
so nobody has to start it by hand; a caller that wants its own tuning starts it *before* the migration.

It keeps one long-running activity draining the key logs (the outbox written by the adapter, the change log
written by triggers) of both stores through the mirror primitive, continuously: the activity polls the logs,
mirrors what it finds, heartbeats its counters, and returns after ``max_activity_seconds`` so its result (a
few counts and the lag) lands in history at a bounded rate. The workflow continues as new when Temporal
suggests it. Rows never pass through here: the activity moves them store to store (rule 6, docs/architecture.md).

It first sets capture up (the log tables; for ``triggers`` the triggers on both stores, idempotently), so
starting it before the application writes in DUAL_WRITE is enough. The ``finish`` signal (sent at CLEANUP)
drains what is left, removes the triggers and completes the workflow.

Models live here (not in workflows.models) so the relay can be added without touching the migration's
contract; the activities import them from this module.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from dualwrite.capture import method_for
    from dualwrite.spec import MigrationSpec
    from workflows.models import SpecCarrier, SpecRef, workflow_id
    from workflows.retry import RELAY_RETRY

RELAY_SETUP = "relay_setup"
RELAY_DRAIN = "relay_drain"
RELAY_TEARDOWN = "relay_teardown"
RELAY_CATCH_UP = "relay_catch_up"
RELAY_CLEAR_LOSSES = "relay_clear_losses"
RELAY_LOSS_MARKS = "relay_loss_marks"
CAPTURE_LOST_SIGNAL = "capture_lost_signal"
"""Signal from the relay to its migration: what log capture missed, whenever that changes."""
RELAY_LOSS_SIGNAL_PATCH = "relay-signals-capture-loss"
RELAY_DENY = "relay_deny_writes"
FINISH_SIGNAL = "finish"
RELAY_SPEC_REF_PATCH = "relay-spec-ref"
"""Histories from before: the relay's drain and the migration's start of the relay carried the spec only;
now the migration hands the relay the reference to the spec it published, and the drains carry that."""
RELAY_SETUP_SPEC_REF_PATCH = "relay-spec-ref-setup"
"""Histories from before: the relay's capture setup and teardown carried the spec; now the reference the
migration handed the relay (evaluated before the setup, so a separate id from the drains')."""

POLLERS_SUFFIX = "-pollers"


def poller_task_queue(task_queue: str) -> str:
    """The task queue of a queue's long pollers (the background repair drain, the relay's drain, the
    rollback-trigger watch). Every dualwrite worker polls both with separate activity slots
    (``worker.build_worker``), so pollers that each hold a slot for minutes never take the slots that
    phase work (copies, verifications, barriers) needs, however many migrations share the workers."""
    return task_queue + POLLERS_SUFFIX


def relay_workflow_id(migration: str) -> str:
    return f"dualwrite-{migration}-relay"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RelayCounters(_Model):
    entries: int = 0
    mirrored: int = 0
    failed: int = Field(default=0, description="keys the target rejected: sent to the repair queue")
    discarded: int = Field(default=0, description="entries dropped unmirrored (the other store is retired)")
    batches: int = 0

    def add(self, other: RelayCounters) -> None:
        self.entries += other.entries
        self.mirrored += other.mirrored
        self.failed += other.failed
        self.discarded += other.discarded
        self.batches += other.batches


class RelayInput(_Model):
    """Start argument of ``RelayWorkflow``; ``carry`` is its continue-as-new state (starters leave it None)."""

    spec: MigrationSpec
    spec_ref: SpecRef | None = Field(default=None, description="the spec as the migration published it to the "
                                     "control store: the drains carry it instead of the spec. None (a relay "
                                     "started by hand, histories from before): the drains carry the spec")
    poll_seconds: float = Field(default=0.2, gt=0, description="idle poll interval of the logs")
    max_activity_seconds: float = Field(default=60.0, gt=0, description="one drain activity returns after this")
    heartbeat_timeout_seconds: float = Field(default=30.0, ge=1)
    batch: int = Field(default=500, ge=1, le=10_000)
    remove_triggers_on_finish: bool = True
    drain_task_queue: str | None = Field(default=None, description="task queue of the long drain activity "
                                         "(the migration names its workers' pollers queue); None: this workflow's")
    carry: RelayCarry | None = None


class RelayCarry(_Model):
    totals: RelayCounters = Field(default_factory=RelayCounters)
    runs: int = 1
    last_lag_seconds: float = 0.0
    finishing: bool = False
    refused_writes: dict[str, int] = Field(default_factory=dict)
    capture_lost: list[str] = Field(default_factory=list)


class RelaySetupInput(SpecCarrier):
    """Set capture up, or take it down (at the finish)."""


class DenyWritesInput(SpecCarrier):
    """Which stores' migrated tables refuse writes that bypass dualwrite (strategy ``triggers``)."""

    deny: list[str] = Field(default_factory=list, description="'old' / 'new': start refusing")
    allow: list[str] = Field(default_factory=list, description="'old' / 'new': stop refusing")
    authoritative: str = Field(default="new", description="the store named in the refusal message")


class RelaySetupResult(_Model):
    logs: list[str] = Field(default_factory=list, description="store/log pairs made ready")
    triggers: list[str] = Field(default_factory=list, description="store/table pairs with capture triggers")


class RelayDrainInput(SpecCarrier):
    max_seconds: float = 60.0
    poll_seconds: float = 0.2
    batch: int = 500
    finish: bool = Field(default=False, description="return as soon as every log is empty")


class RelayDrainResult(_Model):
    counters: RelayCounters = Field(default_factory=RelayCounters)
    lag_seconds: float = Field(default=0.0, description="age of the oldest entry met (database clock)")
    remaining: int = Field(default=0, description="entries still waiting when the activity returned")
    phase: str = ""
    errors: list[str] = Field(default_factory=list, description="a few error messages (no row data)")
    refused_writes: dict[str, int] = Field(default_factory=dict, description="'store/table' -> writes that "
                                           "bypassed dualwrite and were refused there so far (denied writes)")
    capture_lost: list[str] = Field(default_factory=list, description="what log capture missed (strategy cdc: a "
                                    "slot that vanished, a purged binlog, a TRUNCATE): a verification with repair "
                                    "must level the stores before any cutover")


class CatchUpInput(SpecCarrier):
    """Mirror every key-log entry that exists *now* (the drain point) before the caller relies on the other
    store, e.g. before a rollback flips authority back to the old store (called by ``MigrationWorkflow``)."""

    max_seconds: float = Field(default=120.0, gt=0, description="give up (reached=False) after this long")
    batch: int = Field(default=500, ge=1, le=10_000)
    authoritative: str = Field(default="", description="'old' or 'new': only that store's key log is mirrored "
                               "(writes to the other store are denied); '' mirrors both (tenants, outbox)")


class CaptureLostNote(_Model):
    """What the relay tells its migration (``capture_lost_signal``): the capture-loss marks now (empty: none)."""

    lost: list[str] = Field(default_factory=list)


class LossMarksInput(SpecCarrier):
    """Read each store's capture-loss sequence as a verification with repair starts (``relay_loss_marks``)."""


class ClearLossesInput(SpecCarrier):
    """Forget the capture-loss marks a clean verification with repair levelled (called by
    ``VerificationWorkflow``): only losses numbered up to ``upto`` (the sequences read as it started) go; a loss
    noted since is not levelled by it and stays. Histories from before ``upto`` carry ``before`` alone."""

    before: datetime = Field(description="the start of the verification that levelled the stores")
    upto: dict[str, int] | None = Field(default=None, description="store name -> the capture-loss sequence when "
                                        "the verification started (relay_loss_marks)")


class CatchUpResult(_Model):
    reached: bool = Field(default=False, description="every entry logged before the start was mirrored")
    behind: int = Field(default=0, description="entries logged before the start still waiting at the end")
    counters: RelayCounters = Field(default_factory=RelayCounters)
    seconds: float = 0.0
    errors: list[str] = Field(default_factory=list, description="a few error messages (no row data)")


class RelayStatus(_Model):
    migration: str
    totals: RelayCounters
    last_lag_seconds: float
    remaining: int
    runs: int
    finishing: bool
    refused_writes: dict[str, int] = Field(default_factory=dict)
    capture_lost: list[str] = Field(default_factory=list)


RelayInput.model_rebuild()


@workflow.defn(name="RelayWorkflow")
class RelayWorkflow:
    """Drains a migration's key logs continuously until told to finish."""

    def __init__(self) -> None:
        self._carry = RelayCarry()
        self._remaining = 0
        self._migration = ""
        self._drain: asyncio.Task[Any] | None = None
        self._reported: list[str] | None = None

    @workflow.signal(name=FINISH_SIGNAL, description="Drain what is left, remove the triggers, and complete. "
                                                    "Takes no input (any input is ignored).")
    def finish(self, *_args: Any) -> None:
        self._carry.finishing = True
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()

    @workflow.query(name="status", description="Counters, lag and backlog of the relay.")
    def status(self, *_args: Any) -> RelayStatus:
        return RelayStatus(migration=self._migration, totals=self._carry.totals,
                           last_lag_seconds=self._carry.last_lag_seconds, remaining=self._remaining,
                           runs=self._carry.runs, finishing=self._carry.finishing,
                           refused_writes=self._carry.refused_writes, capture_lost=self._carry.capture_lost)

    @workflow.run
    async def run(self, inp: RelayInput) -> RelayStatus:
        self._migration = inp.spec.name
        setup_spec: dict[str, Any] = {"spec": inp.spec}
        if inp.spec_ref is not None and workflow.patched(RELAY_SETUP_SPEC_REF_PATCH):
            setup_spec = {"spec_ref": inp.spec_ref}
        if inp.carry is not None:
            self._carry = inp.carry
        else:
            await workflow.execute_activity(
                RELAY_SETUP, RelaySetupInput(**setup_spec), start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=min(30.0, inp.heartbeat_timeout_seconds)), retry_policy=RELAY_RETRY,
                result_type=RelaySetupResult, summary="set up capture")
        hb = timedelta(seconds=inp.heartbeat_timeout_seconds)
        spec: dict[str, Any] = {"spec": inp.spec}
        if inp.spec_ref is not None and workflow.patched(RELAY_SPEC_REF_PATCH):
            spec = {"spec_ref": inp.spec_ref}
        self._details()
        while not self._carry.finishing:
            self._drain = asyncio.ensure_future(workflow.execute_activity(
                RELAY_DRAIN,
                RelayDrainInput(**spec, max_seconds=inp.max_activity_seconds, poll_seconds=inp.poll_seconds,
                                batch=inp.batch),
                start_to_close_timeout=timedelta(seconds=inp.max_activity_seconds + 300), heartbeat_timeout=hb,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED, task_queue=inp.drain_task_queue,
                retry_policy=RELAY_RETRY, result_type=RelayDrainResult, summary="relay drain"))
            try:
                res: RelayDrainResult = await self._drain
            except (ActivityError, asyncio.CancelledError) as exc:
                if self._carry.finishing:
                    break  # finish() cancelled the drain: go on to the final one
                if isinstance(exc, asyncio.CancelledError) or is_cancelled_exception(exc):
                    raise  # the workflow itself is being cancelled
                workflow.logger.warning("relay drain failed: %s", exc)
                await workflow.sleep(timedelta(seconds=10))
                continue
            finally:
                self._drain = None
            self._absorb(res)
            await self._report_losses()
            if workflow.info().is_continue_as_new_suggested() and not self._carry.finishing:
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._carry.runs += 1
                workflow.continue_as_new(inp.model_copy(update={"carry": self._carry}))
        # finishing: drain what is left, then take capture down
        res = await workflow.execute_activity(
            RELAY_DRAIN, RelayDrainInput(**spec, max_seconds=inp.max_activity_seconds,
                                         poll_seconds=inp.poll_seconds, batch=inp.batch, finish=True),
            start_to_close_timeout=timedelta(seconds=inp.max_activity_seconds + 300), heartbeat_timeout=hb,
            retry_policy=RELAY_RETRY, result_type=RelayDrainResult, summary="final drain")
        self._absorb(res)
        await self._report_losses()
        if inp.remove_triggers_on_finish and method_for(inp.spec.strategy).database_capture:
            await workflow.execute_activity(
                RELAY_TEARDOWN, RelaySetupInput(**setup_spec), start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=hb, retry_policy=RELAY_RETRY, summary="remove triggers")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _absorb(self, res: RelayDrainResult) -> None:
        self._carry.totals.add(res.counters)
        self._carry.last_lag_seconds = res.lag_seconds
        self._carry.refused_writes = res.refused_writes or self._carry.refused_writes
        self._carry.capture_lost = res.capture_lost
        self._remaining = res.remaining
        self._details()

    async def _report_losses(self) -> None:
        """Tell the migration what capture missed when that changed, so its status shows it (a run after
        continue-as-new reports a non-empty list once more: harmless, the signal sets, never adds)."""
        lost = list(self._carry.capture_lost)
        if lost == (self._reported if self._reported is not None else []):
            return
        if not workflow.patched(RELAY_LOSS_SIGNAL_PATCH):
            return
        self._reported = lost
        try:
            await workflow.get_external_workflow_handle(workflow_id(self._migration)).signal(
                CAPTURE_LOST_SIGNAL, CaptureLostNote(lost=lost))
        except Exception as exc:  # noqa: BLE001 - a relay started by hand, a migration that ended
            workflow.logger.info("relay %s: capture loss not reported to the migration: %s", self._migration, exc)

    def _details(self) -> None:
        t = self._carry.totals
        workflow.set_current_details(
            f"**Relay {self._migration}**\n\n"
            "| mirrored | entries | sent to repair | discarded | lag | backlog |\n|---:|---:|---:|---:|---:|---:|\n"
            f"| {t.mirrored:,} | {t.entries:,} | {t.failed:,} | {t.discarded:,} | "
            f"{self._carry.last_lag_seconds:.2f} s | {self._remaining:,} |"
            + ("\n\n*finishing: final drain*" if self._carry.finishing else "")
            + "".join(f"\n\n**capture lost changes:** {m}" for m in self._carry.capture_lost))
