"""The migration's public contract: its start input, the operators' requests and results, its status
query, the state a run hands to its successor, and the gate evidence a transition is decided on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from dualwrite.gates import GateMetric, TrafficFacts, TriggerEvaluation
from dualwrite.spec import MigrationSpec
from workflows.bypass import BypassSummary
from workflows.models._core import Phase, _Model
from workflows.models._spec import SpecCarrier


class Tuning(_Model):
    """Timing knobs of the orchestration. The defaults suit production; tests shorten them."""

    heartbeat_timeout_seconds: float = Field(default=30.0, ge=1, description="long activities heartbeat "
                                             "at least this often; a dead worker is noticed after this long")
    barrier_poll_seconds: float = Field(default=60.0, ge=1, description="one barrier activity waits this long")
    gate_recheck_seconds: float = Field(default=300.0, ge=1, description="auto mode: re-evaluate a failing "
                                        "gate at least this often")
    repair_idle_seconds: float = Field(default=300.0, ge=1, description="an idle repair long-poll returns "
                                       "after this long")
    verify_chunk_size: int | None = Field(default=None, ge=1)
    verify_heartbeat_seconds: float = Field(default=60.0, ge=1, description="a verification activity "
                                            "heartbeats per chunk: a dead worker's chunk is retried after this")
    backfill_ranges: int | None = Field(default=None, ge=1, description="key ranges per table; default "
                                        "2 x backfill_concurrency")
    fence_barrier_seconds: float = Field(default=10.0, gt=0, description="write fence: how long live "
                                         "instances may take to acknowledge the fence (and finish writes routed "
                                         "before it) before the authority change is refused and the fence lifted")
    fence_drain_seconds: float = Field(default=10.0, gt=0, description="write fence: how long draining the "
                                       "repair queue and the key logs may take before the change is refused")


class MigrationInput(_Model):
    """Start argument of ``MigrationWorkflow``.

    ``carry`` is internal: the state a run hands to its continue-as-new successor. Starters leave it None.
    """

    spec: MigrationSpec
    started_by: str = ""
    tuning: Tuning = Field(default_factory=Tuning)
    carry: MigrationCarry | None = None


class TransitionRequest(_Model):
    """Argument of every operator update / signal (advance, rollback, pause, resume, approve, hold, verify)."""

    to: Phase | None = Field(default=None, description="target phase; default: the next (advance) or "
                                                       "the previous (rollback) phase")
    reason: str = Field(default="", description="why; required for rollback, force and hold")
    by: str = Field(default="", description="who asks (recorded in the transition history)")
    force: bool = Field(default=False, description="advance even though the gate does not pass")
    override_stuck_repairs: bool = Field(
        default=False, description="move authority although repair-queue keys of the flipping scope cannot be "
        "mirrored into the gaining store (their writes on the losing store are then overwritten from it); needs "
        "a reason; recorded in the transition")
    dry_run: bool = Field(default=False, description="validate and report (with the gate evaluation), "
                                                     "change nothing")
    tenant: str | None = Field(default=None, description="move one tenant only (spec `tenants`)")
    confirm_cleanup: bool = Field(default=False, description="entering CLEANUP (the point of no return) needs "
                                                             "this confirmation")
    drop_old_tables: bool = Field(default=False, description="CLEANUP drops the old tables instead of "
                                                             "renaming them (needs confirm_drop)")
    confirm_drop: str = Field(default="", description="the migration's name again, to confirm drop_old_tables")
    release: bool = Field(default=False, description="hold: release the hold instead of placing one")
    from_phase: Phase | None = Field(default=None, description="advance: the phase this advance means to leave "
                                     "(`dualwrite advance` fills it in); when the migration (or the tenant) is "
                                     "no longer in it, the advance is a no-op, so a repeated or concurrent "
                                     "advance never moves twice")


class AbortRecord(_Model):
    """An operator's abort: the migration ended with the old store authoritative (see ``abort``)."""

    by: str = ""
    reason: str = ""
    at: datetime | None = None
    from_phase: Phase
    message: str = ""


class TransitionResult(_Model):
    ok: bool
    phase: Phase
    epoch: int
    message: str
    tenant: str | None = None
    gate: GateResult | None = Field(default=None, description="the gate evaluation (advance into a gated "
                                                              "phase, dry runs included)")
    would: list[str] = Field(default_factory=list, description="dry run: what the transition would change")


class TableProgress(_Model):
    source: str
    target: str
    rows_copied: int = 0
    rows_estimate: int = 0
    percent: int = 0
    ranges_done: int = 0
    ranges_total: int = 0
    eta_seconds: float | None = None
    done: bool = False


class TableVerification(_Model):
    """One table's verification outcome: counts only, never row values."""

    source: str
    target: str
    rows_source: int = 0
    rows_target: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    missing: int = 0
    extra: int = 0
    field_different: int = 0
    fields: list[str] = Field(default_factory=list, description="target columns that differed")
    repaired: int = 0
    unresolved: int = Field(default=0, description="differences left after repair (all of them without)")
    in_flight: int = Field(default=0, description="outbox / triggers: differences whose key still waits in a "
                           "key log (the relay mirrors it); neither repaired nor unresolved")
    sample_keys: list[list[Any]] = Field(default_factory=list, description="a few keys (wire form) of the "
                                         "unresolved rows, so the evidence names them; never a row value")
    ok: bool = False
    error: str = ""


class VerificationSummary(_Model):
    at: datetime
    ok: bool
    rows_compared: int
    missing: int = 0
    extra: int = 0
    field_different: int = 0
    repaired: int = 0
    unresolved: int = 0
    direction: str = "old->new"
    repair: bool = True
    tenant: str | None = None
    tables: list[TableVerification] = Field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``ok`` only when nothing differed: a run that had to repair says so (``repaired N``), since its
        repairs rewrote rows of the store that is not authoritative ([T2-1]); else ``FAILED``."""
        if not self.ok:
            return "FAILED"
        return f"repaired {self.repaired}" if self.repaired else "ok"

    @property
    def repaired_into(self) -> str:
        """The store a repair writes into: always the one that is not authoritative."""
        return "new" if self.direction == "old->new" else "old"


class TransitionRecord(_Model):
    from_phase: Phase
    to_phase: Phase
    at: datetime
    by: str = ""
    reason: str = ""
    kind: str = Field(description="start | advance | auto | force | rollback | auto-rollback | pause | resume "
                                  "| approve | hold | release | cleanup")
    tenant: str | None = None
    gate_passed: bool | None = Field(default=None, description="entering a gated phase: did its gate pass "
                                                               "(False: forced past it)")


class HoldState(_Model):
    """An operator's (or an automatic rollback's) stop on forward transitions, until released."""

    by: str = ""
    reason: str = ""
    at: datetime | None = None


class TenantState(_Model):
    """One tenant that has its own phase (ahead of the migration's, at most CUTOVER_WRITES)."""

    tenant: str
    phase: Phase
    entered_at: datetime | None = None
    work_done: bool = True
    work_state: str = ""
    approved_for: Phase | None = None
    gate: dict[str, Any] | None = None
    last_verification: VerificationSummary | None = None


class TenantStatus(_Model):
    """A tenant's row in the status: its effective phase side by side with the others."""

    tenant: str
    phase: Phase
    own: bool = Field(description="moved on its own (else it follows the migration's phase)")
    authoritative: str
    reads_from: str
    work_state: str = ""
    hold: HoldState | None = None
    gate_passed: bool | None = None
    last_verification_ok: bool | None = None


class RetiredTable(_Model):
    source: str
    action: str = Field(description="renamed | dropped | already-renamed | already-dropped")
    retired_as: str | None = None


class RetireResult(_Model):
    """What CLEANUP did to the old store: names and counts only."""

    tables: list[RetiredTable] = Field(default_factory=list)
    triggers_removed: list[str] = Field(default_factory=list)
    log_entries_mirrored: int = 0
    log_entries_discarded: int = 0
    logs_dropped: list[str] = Field(default_factory=list)
    repair_entries_discarded: int = 0


class MigrationStatus(_Model):
    name: str
    phase: Phase
    paused: bool
    mode: str
    strategy: str
    epoch: int
    tables: list[TableProgress] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    last_verification: VerificationSummary | None = None
    gate: dict[str, Any] | None = None
    transitions: list[TransitionRecord] = Field(default_factory=list)
    repair_queue_depth: int = 0
    waiting_for: str = ""
    hold: HoldState | None = None
    tenants: list[TenantStatus] = Field(default_factory=list)
    rolling_back: str = Field(default="", description="a rollback in progress (it finishes after a crash)")
    triggers: TriggerEvaluation | None = Field(default=None, description="last automatic-rollback check")
    retirement: RetireResult | None = None
    aborted: AbortRecord | None = Field(default=None, description="set when an operator aborted the migration: "
                                        "it ended with the old store authoritative")
    signals_dropped: list[str] = Field(default_factory=list, description="the last signals dropped for bad "
                                       "input (name and why), newest last")
    bypass: BypassSummary | None = Field(default=None, description="writes that bypassed the adapter "
                                         "(counts per table and writer identity; no keys)")
    capture_lost: list[str] = Field(default_factory=list, description="what log capture missed (strategy cdc: "
                                    "a vanished slot, a purged binlog, a TRUNCATE), as the relay last reported it; "
                                    "a clean verification with repair levels and clears it")


class MigrationCarry(_Model):
    """Everything a MigrationWorkflow run hands to its successor on continue-as-new."""

    phase: Phase = Phase.PREPARE
    epoch: int = 0
    paused: bool = False
    published_epoch: int = 0
    phase_work_done: bool = False
    approved_for: Phase | None = None
    tables: list[TableProgress] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    last_verification: VerificationSummary | None = None
    gate: dict[str, Any] | None = None
    transitions: list[TransitionRecord] = Field(default_factory=list)
    repair_queue_depth: int = 0
    holds: dict[str, HoldState] = Field(default_factory=dict, description="'' = the whole migration, else "
                                                                           "a tenant")
    tenants: list[TenantState] = Field(default_factory=list)
    rolling_back: str = ""
    entered_by_rollback: bool = False
    cleanup_drop: bool = False
    retirement: RetireResult | None = None
    bypass: BypassSummary | None = None
    capture_lost: list[str] = Field(default_factory=list, description="the relay's last capture-loss report")
    triggers: TriggerEvaluation | None = None
    next_verify_at: datetime | None = None
    verify_requested: bool = False
    spec_published: str = Field(default="", description="digest of the spec published to the control store")
    backfill_runs: int = 0
    verify_runs: int = 0
    backfill_done: bool = False
    backfill_percent_step: int = 0
    phase_entered_at: datetime | None = None
    work_state: str = ""
    started_by: str = ""
    runs: int = 1
    aborted: AbortRecord | None = None


class GateInput(SpecCarrier):
    phase: Phase
    to: Phase
    backfill_percent: int
    backfill_done: bool
    last_verification: VerificationSummary | None = None
    phase_entered_at: datetime | None = None
    repair_queue_depth: int = 0
    approved: bool = False
    tenant: str | None = None
    at: datetime | None = Field(default=None, description="the workflow's now: verification age is "
                                                          "measured against it")


class GateResult(_Model):
    """A gate decision and its evidence (recorded in history: counts, thresholds, a few keys)."""

    passed: bool
    to: Phase
    checks: dict[str, bool] = Field(default_factory=dict)
    evidence: dict[str, Any] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    metrics: list[GateMetric] = Field(default_factory=list, description="value, threshold, samples, verdict")
    tenant: str | None = None
    at: datetime | None = None
    traffic: TrafficFacts | None = None


MigrationInput.model_rebuild()
TransitionResult.model_rebuild()
