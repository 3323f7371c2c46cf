"""What the migration's child workflows take and return: the backfill (key ranges, checkpoints, progress)
and the verification."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from dualwrite.spec import MigrationSpec
from workflows.models._contract import Tuning
from workflows.models._core import _Model
from workflows.models._spec import SpecRef


class KeyRange(_Model):
    """``lo < key <= hi`` in wire form (:func:`dualwrite.keys.encode_key`); None is open."""

    index: int
    lo: list[Any] | None = None
    hi: list[Any] | None = None


class RangeCheckpoint(_Model):
    """Heartbeat details of a range copy: enough to resume after a crash, and to report progress."""

    cursor: list[Any] | None = None
    rows: int = 0
    batches: int = 0
    conflict_batches: int = 0
    fixed_keys: int = 0
    attempt: int = 1
    redone_batches: int = 0


class RangeResult(_Model):
    index: int
    rows: int = 0
    batches: int = 0
    conflict_batches: int = 0
    fixed_keys: int = 0
    seconds: float = 0.0
    attempts: int = 1
    resumed: bool = False
    redone_batches: int = Field(default=0, description="batches copied again after a resume (<= 1 each)")


class TableRef(_Model):
    """Which table of which migration, by names only: activities resolve and compile it themselves.

    Exactly one of ``spec_ref`` (current workflows) and ``spec`` (the whole spec inline: recorded histories
    and workflows started before specs were published) is set."""

    spec: MigrationSpec | None = None
    spec_ref: SpecRef | None = None
    source: str
    reverse: bool = Field(default=False, description="new -> old (after write cutover)")

    @model_validator(mode="after")
    def _one_spec(self) -> TableRef:
        if (self.spec is None) == (self.spec_ref is None):
            raise ValueError("a TableRef carries exactly one of spec and spec_ref")
        return self

    def inline_spec(self) -> MigrationSpec:
        """The spec carried inline (child workflow inputs carry it; activity inputs need not)."""
        if self.spec is None:
            raise ValueError(f"table {self.source}: the spec is not inline here (only a spec_ref)")
        return self.spec

    def by_ref(self, ref: SpecRef | None) -> TableRef:
        """This table for an activity input: by ``ref`` when the spec is published, else as it is."""
        return self if ref is None else TableRef(spec_ref=ref, source=self.source, reverse=self.reverse)


class PlanRangesInput(_Model):
    table: TableRef
    ranges: int


class RangePlan(_Model):
    rows_estimate: int
    ranges: list[KeyRange]


class CopyRangeInput(_Model):
    table: TableRef
    range: KeyRange


class BackfillInput(_Model):
    """Input of the per-table ``BackfillWorkflow``; ``carry`` is its continue-as-new state.

    ``table`` carries the spec inline (the child workflow reads it); with ``spec_ref`` set the spec is
    published and the child's activity inputs carry the reference instead."""

    table: TableRef
    spec_ref: SpecRef | None = None
    concurrency: int
    ranges: int | None = None
    tuning: Tuning = Field(default_factory=Tuning)
    carry: BackfillCarry | None = None


class BackfillCarry(_Model):
    plan: RangePlan
    done: list[RangeResult] = Field(default_factory=list)
    started_at: datetime | None = None
    last_percent_step: int = -1
    continued_as_new: int = 0


class BackfillResult(_Model):
    source: str
    target: str
    rows: int
    rows_estimate: int
    ranges: int
    batches: int
    redone_batches: int
    resumed_ranges: int
    continued_as_new: int = 0
    seconds: float = 0.0
    range_results: list[RangeResult] = Field(default_factory=list)


class PauseState(_Model):
    """Signal to a BackfillWorkflow: hold (finish running ranges, start no new ones) or go on."""

    paused: bool


class BackfillProgress(_Model):
    """Signal from a BackfillWorkflow to its parent: coarse progress of one table."""

    source: str
    rows_copied: int
    rows_estimate: int
    ranges_done: int
    ranges_total: int
    eta_seconds: float | None = None
    done: bool = False


class VerifyInput(_Model):
    """Input of ``VerificationWorkflow``; with ``spec_ref`` set the spec is published and the per-table
    verify activities' inputs carry the reference instead of the spec."""

    spec: MigrationSpec
    spec_ref: SpecRef | None = None
    reverse: bool = False
    repair: bool = True
    tables: list[str] | None = Field(default=None, description="source tables; default: all (a tenant: "
                                                               "the tables with a tenant column)")
    reason: str = ""
    tenant: str | None = Field(default=None, description="only this tenant's rows")
    exclude_tenants: list[str] = Field(default_factory=list, description="leave these tenants' rows alone "
                                       "(their authority runs the other way)")
    tuning: Tuning = Field(default_factory=Tuning)

    def table(self, source: str) -> TableRef:
        """One table for a verify activity's input: by reference when the spec is published."""
        if self.spec_ref is not None:
            return TableRef(spec_ref=self.spec_ref, source=source, reverse=self.reverse)
        return TableRef(spec=self.spec, source=source, reverse=self.reverse)


class VerifyTableInput(_Model):
    table: TableRef
    repair: bool = True
    chunk_size: int | None = None
    tenant: str | None = None
    exclude_tenants: list[str] = Field(default_factory=list)


BackfillInput.model_rebuild()
