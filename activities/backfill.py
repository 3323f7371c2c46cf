"""BACKFILL: plan a table's key ranges, copy one range with checkpoints, clear the checkpoints at the end."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating, raise_if_stopping, stopping
from activities.stores import StoreCache
from dualwrite import control
from dualwrite.backfill_copy import CopyProgress, copy_range, plan_bounds
from dualwrite.keys import decode_key, encode_key
from dualwrite.rowcount import estimate_rows
from workflows.models import (
    ActivityNames,
    CheckpointScope,
    CopyRangeInput,
    KeyRange,
    PlanRangesInput,
    RangeCheckpoint,
    RangePlan,
    RangeResult,
)

__all__ = ["BackfillActivities"]

log = logging.getLogger("dualwrite.activities")


class BackfillActivities:
    """The backfill's activities, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    @activity.defn(name=ActivityNames.PLAN_RANGES, no_thread_cancel_exception=True)
    def plan_ranges(self, inp: PlanRangesInput) -> RangePlan:
        """Split a table's key space into ``ranges`` ranges of about equal row counts.

        Boundaries come from :func:`dualwrite.backfill_copy.plan_bounds` (index walks, or a sample for string keys
        compared bytewise), so only a few key values reach history. A background thread heartbeats while
        its queries run: a dead worker's plan moves to another worker within the heartbeat timeout."""
        with mapped_errors(), heartbeating():
            _spec, src, _, mapping = self.stores.table(inp.table)
            total = estimate_rows(src, mapping.source_table)
            activity.heartbeat(0)
            n = max(1, min(inp.ranges, math.ceil(total / max(1, min(mapping.batch_size, 1000)))))
            bounds: list[list[Any] | None] = [encode_key(k) for k in plan_bounds(src, mapping, total, n)]
            edges: list[list[Any] | None] = [None, *bounds, None]
            ranges = [KeyRange(index=i, lo=edges[i], hi=edges[i + 1]) for i in range(len(edges) - 1)]
            return RangePlan(rows_estimate=total, ranges=ranges)

    @activity.defn(name=ActivityNames.COPY_RANGE, no_thread_cancel_exception=True)
    def copy_range(self, inp: CopyRangeInput) -> RangeResult:
        """Copy one key range batch by batch (the table's ``batch_size`` from the spec); checkpoint and
        heartbeat the cursor after every commit.

        The checkpoint is written to the control store right after each batch commits, and also sent as
        heartbeat details (which Temporal throttles). On a retry the further of the two wins, so a worker
        killed at any instant redoes at most the batch that was in flight."""
        with mapped_errors():
            info = activity.info()
            spec, src, dst, mapping = self.stores.table(inp.table)
            ctl = self.stores.control_store(spec.control)
            scope = f"{info.workflow_id}/{inp.table.source}"
            start = _resume_point(info.heartbeat_details, control.load_checkpoint(ctl, spec.name, scope,
                                                                                  inp.range.index), inp.range.lo)
            resumed = start.batches > 0 or info.attempt > 1
            kinds = mapping.key_kinds
            prog = CopyProgress(cursor=decode_key(start.cursor, kinds), rows=start.rows, batches=start.batches,
                                conflict_batches=0, fixed_keys=start.fixed_keys)
            if resumed:
                log.info("range %s of %s resumes after %d batches (attempt %d)", inp.range.index,
                         inp.table.source, start.batches, info.attempt)

            def on_batch(p: CopyProgress) -> None:
                wire = encode_key(p.cursor)
                control.save_checkpoint(ctl, spec.name, scope, inp.range.index, wire, p.rows, p.batches)
                activity.heartbeat(RangeCheckpoint(cursor=wire, rows=p.rows, batches=p.batches,
                                                   conflict_batches=p.conflict_batches,
                                                   fixed_keys=p.fixed_keys, attempt=info.attempt))

            began = time.monotonic()
            done = copy_range(src, dst, mapping, lo=decode_key(inp.range.lo, kinds),
                              hi=decode_key(inp.range.hi, kinds), on_batch=on_batch, should_stop=stopping,
                              progress=prog)
            if not done.done:
                raise_if_stopping()
                raise ApplicationError("the range copy stopped before its end", type="CopyInterrupted")
            return RangeResult(index=inp.range.index, rows=done.rows, batches=done.batches,
                               conflict_batches=done.conflict_batches, fixed_keys=done.fixed_keys,
                               seconds=time.monotonic() - began, attempts=info.attempt, resumed=resumed,
                               redone_batches=done.conflict_batches if resumed else 0)

    @activity.defn(name=ActivityNames.CLEAR_CHECKPOINTS, no_thread_cancel_exception=True)
    def clear_checkpoints(self, inp: CheckpointScope) -> int:
        with mapped_errors(), heartbeating():
            ctl = self.stores.control_store(inp.control_store)
            return control.clear_checkpoints(ctl, inp.migration, inp.scope)


def _resume_point(details: Any, saved: control.Checkpoint | None, lo: list[Any] | None) -> RangeCheckpoint:
    """Where a range copy starts: the further of the last heartbeat's checkpoint and the one saved in the
    control store, or the range's own start."""
    start = RangeCheckpoint(cursor=lo)
    if details:
        start = _checkpoint_from(details[0]) or start
    if saved is not None and saved.batches > start.batches:
        start = RangeCheckpoint(cursor=saved.cursor, rows=saved.rows, batches=saved.batches)
    return start


def _checkpoint_from(raw: Any) -> RangeCheckpoint | None:
    """Heartbeat details come back as plain dicts: rebuild the model (or ignore what is not one)."""
    if isinstance(raw, RangeCheckpoint):
        return raw
    if isinstance(raw, dict):
        try:
            return RangeCheckpoint.model_validate(raw)
        except Exception:  # noqa: BLE001 - details from an older worker version: start over
            return None
    return None
