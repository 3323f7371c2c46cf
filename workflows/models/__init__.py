"""The data that crosses Temporal: workflow inputs, update/signal arguments, query results.

Everything here is a pydantic model so that ``pydantic_data_converter`` can round-trip it, and every
workflow, activity, update and signal takes exactly one model (the Web UI's forms send one JSON value).
These models are the contract between the workflows, the activities and the ``dualwrite`` CLI.

Rules that shape them (rules 6 and 7, docs/architecture.md):
- no row data: only names, key-range bounds (wire keys, see :mod:`dualwrite.keys`), counts, checkpoints;
- no secrets: stores are named, never given by URL.

This module is imported by workflow code, so it imports only the stdlib, pydantic, temporalio and the
spec models.
"""

from __future__ import annotations

from workflows.models._activities import (
    AbortCleanupInput,
    AbortCleanupResult,
    ActivityNames,
    BarrierStatus,
    CheckpointScope,
    ControlInput,
    PrepareInput,
    PrepareResult,
    PublishSpecInput,
    RepairDrainInput,
    RepairDrainResult,
    RetireInput,
    StuckRepairs,
    TriggerScope,
    TriggerWatchInput,
    TriggerWatchResult,
)
from workflows.models._bypass_io import BypassCaptureInput, BypassCollectInput, BypassRefuseInput
from workflows.models._children import (
    BackfillCarry,
    BackfillInput,
    BackfillProgress,
    BackfillResult,
    CopyRangeInput,
    KeyRange,
    PauseState,
    PlanRangesInput,
    RangeCheckpoint,
    RangePlan,
    RangeResult,
    TableRef,
    VerifyInput,
    VerifyTableInput,
)
from workflows.models._contract import (
    AbortRecord,
    GateInput,
    GateResult,
    HoldState,
    MigrationCarry,
    MigrationInput,
    MigrationStatus,
    RetiredTable,
    RetireResult,
    TableProgress,
    TableVerification,
    TenantState,
    TenantStatus,
    TransitionRecord,
    TransitionRequest,
    TransitionResult,
    Tuning,
    VerificationSummary,
)
from workflows.models._core import (
    BACKFILL_PERCENT,
    MIGRATION_PHASE,
    PHASE_ORDER,
    SEARCH_ATTRIBUTE_CLI_ARGS,
    SEARCH_ATTRIBUTES,
    TASK_QUEUE,
    WORKFLOW_ID_PREFIX,
    Phase,
    workflow_id,
)
from workflows.models._spec import SpecCarrier, SpecRef, spec_digest

__all__ = [
    "AbortCleanupInput",
    "AbortCleanupResult",
    "BypassCaptureInput",
    "BypassCollectInput",
    "BypassRefuseInput",
    "AbortRecord",
    "ActivityNames",
    "BACKFILL_PERCENT",
    "BackfillCarry",
    "BackfillInput",
    "BackfillProgress",
    "BackfillResult",
    "BarrierStatus",
    "CheckpointScope",
    "ControlInput",
    "CopyRangeInput",
    "GateInput",
    "GateResult",
    "HoldState",
    "KeyRange",
    "MIGRATION_PHASE",
    "MigrationCarry",
    "MigrationInput",
    "MigrationStatus",
    "PHASE_ORDER",
    "PauseState",
    "Phase",
    "PlanRangesInput",
    "PrepareInput",
    "PrepareResult",
    "PublishSpecInput",
    "RangeCheckpoint",
    "RangePlan",
    "RangeResult",
    "SpecCarrier",
    "SpecRef",
    "RepairDrainInput",
    "RepairDrainResult",
    "StuckRepairs",
    "RetireInput",
    "RetireResult",
    "RetiredTable",
    "SEARCH_ATTRIBUTES",
    "SEARCH_ATTRIBUTE_CLI_ARGS",
    "TASK_QUEUE",
    "TableProgress",
    "TableRef",
    "TableVerification",
    "TenantState",
    "TenantStatus",
    "TransitionRecord",
    "TransitionRequest",
    "TransitionResult",
    "TriggerScope",
    "TriggerWatchInput",
    "TriggerWatchResult",
    "Tuning",
    "VerificationSummary",
    "VerifyInput",
    "VerifyTableInput",
    "WORKFLOW_ID_PREFIX",
    "spec_digest",
    "workflow_id",
]
