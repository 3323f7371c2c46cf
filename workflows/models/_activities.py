"""Activity names, and the inputs and results of the activities the migration calls by name (control
plane, preflight, repair drain, abort, rollback triggers, retirement)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from dualwrite.gates import TriggerEvaluation
from dualwrite.spec import MigrationSpec
from workflows.models._contract import TableProgress
from workflows.models._core import Phase, _Model
from workflows.models._spec import SpecCarrier


class ControlInput(_Model):
    """Publish the state of one migration, or wait for its phase barrier."""

    migration: str
    control_store: str
    phase: Phase = Phase.PREPARE
    epoch: int = 0
    paused: bool = False
    overrides: dict[str, Any] = Field(default_factory=dict)
    live_seconds: float | None = Field(default=None, description="liveness window; default: the worker's")
    max_wait_seconds: float = Field(default=60.0, description="barrier: return (not passed) after this long")
    poll_seconds: float = Field(default=0.5, gt=0, description="barrier: how often the instances are read")


class PrepareInput(_Model):
    spec: MigrationSpec
    #: entered by a rollback (not the migration's start): capture kept from before goes first (strategy cdc)
    rollback: bool = False


class PublishSpecInput(_Model):
    """Store the spec once in the control store under ``digest`` (idempotent), so later activity inputs
    carry a :class:`~workflows.models.SpecRef` instead of the spec."""

    spec: MigrationSpec
    digest: str


class CheckpointScope(_Model):
    migration: str
    control_store: str
    scope: str


class BarrierStatus(_Model):
    passed: bool
    epoch: int
    live_instances: int = 0
    lagging: list[str] = Field(default_factory=list, description="instance ids that have not seen the epoch")


class PrepareResult(_Model):
    ok: bool
    problems: list[str] = Field(default_factory=list)
    tables: list[TableProgress] = Field(default_factory=list)


class RepairDrainInput(SpecCarrier):
    """One long-poll of the repair queue: returns after draining what was due, or after ``max_idle_seconds``
    with nothing to do, so the workflow's status (queue depth) stays fresh at a few events per poll."""

    max_seconds: float = 60.0
    max_idle_seconds: float = 300.0
    poll_seconds: float = 1.0
    batch: int = 1000
    base_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    under_fence: bool = Field(default=False, description="the workflow's own drain under a write fence; the "
                              "background drain waits while a fence is published (authority is moving)")
    tenant: str | None = Field(default=None, description="under a fence: the tenant whose authority moves "
                               "(None: the whole migration); what is left is counted for that scope")


class StuckRepairs(_Model):
    """One table's keys a drain under a write fence could not mirror (counts and an error, never keys)."""

    table: str
    keys: int
    blocking: int = Field(description="keys of the scope whose authority moves (they hold the flip)")
    attempts: int
    error: str = ""


class RepairDrainResult(_Model):
    mirrored: int = 0
    failed: int = 0
    remaining: int = 0
    due_in_seconds: float | None = None
    errors: list[str] = Field(default_factory=list, description="a few error messages (no row data)")
    blocking: int | None = Field(default=None, description="under a fence: the keys left that hold the flip "
                                 "(see stuck); None from workers that do not count them")
    stuck: list[StuckRepairs] = Field(default_factory=list, description="under a fence: what is left, per table")
    lost_tail_writers: int = Field(default=0, description="under a fence: async writers found dead with keys "
                                   "queued (their tables were compared and repaired into the gaining store)")
    lost_tail_repaired: int = Field(default=0, description="under a fence: keys of those tails repaired")


class ActivityNames:
    """Activity names: workflows call activities by name so they never import the data path."""

    PREPARE = "prepare"
    PUBLISH_STATE = "publish_state"
    PUBLISH_SPEC = "publish_spec"
    AWAIT_BARRIER = "await_barrier"
    PLAN_RANGES = "plan_ranges"
    COPY_RANGE = "copy_range"
    CLEAR_CHECKPOINTS = "clear_checkpoints"
    VERIFY_TABLE = "verify_table"
    DRAIN_REPAIRS = "drain_repairs"
    EVALUATE_GATE = "evaluate_gate"
    WATCH_TRIGGERS = "watch_rollback_triggers"
    RETIRE_OLD = "retire_old_store"
    ABORT_CLEANUP = "abort_cleanup"


class AbortCleanupInput(_Model):
    """Remove what a migration left in the stores when it is aborted (the old store's data stays as it is)."""

    spec: MigrationSpec
    remove_state: bool = Field(default=True, description="delete the published state and instance rows too "
                               "(only once every live instance has seen the abort's epoch)")


class AbortCleanupResult(_Model):
    triggers_removed: list[str] = Field(default_factory=list, description="store/table pairs")
    log_entries_deleted: int = 0
    repair_entries_deleted: int = 0
    control_rows_deleted: int = 0


class TriggerScope(_Model):
    """One scope the rollback triggers watch: the migration (tenant None) or one tenant, in a CUTOVER_*."""

    tenant: str | None = None
    phase: Phase
    since: datetime = Field(description="statistics older than this (the barrier of the phase) are ignored")


class TriggerWatchInput(SpecCarrier):
    """A long-poll of the statistics: returns when a trigger trips, or after ``max_seconds`` quietly."""

    scopes: list[TriggerScope]
    max_seconds: float = 300.0


class TriggerWatchResult(_Model):
    tripped: bool = False
    tenant: str | None = None
    phase: Phase | None = None
    evaluation: TriggerEvaluation | None = None
    checks: int = 0


class RetireInput(SpecCarrier):
    """CLEANUP: retire the old store's tables (rename, or drop), remove capture and key logs."""

    drop: bool = False
    stamp: str = Field(description="suffix of the retired names, fixed by the workflow so a retry reuses it")
