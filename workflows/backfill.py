"""BackfillWorkflow: copy one table's history from the old store to the new, range by range, in parallel.

The key space is split into ranges of about equal size (one planning activity); each range is ONE
long-running activity that commits batch after batch and heartbeats its cursor, because an activity
costs ~50 ms of scheduling here and a batch only a few: one activity per batch would spend the backfill's
throughput on bookkeeping. Up to ``concurrency`` ranges run at once, on whichever workers poll the task
queue, so adding workers adds throughput.

History holds the plan (a few key bounds), one result per range (counts) and coarse progress signals to
the parent; never a row. When Temporal suggests it, the workflow stops starting ranges, lets the running
ones finish, and continues as new with the results so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.models import (
        BACKFILL_PERCENT,
        ActivityNames,
        BackfillCarry,
        BackfillInput,
        BackfillProgress,
        BackfillResult,
        CheckpointScope,
        CopyRangeInput,
        KeyRange,
        PauseState,
        PlanRangesInput,
        RangePlan,
        RangeResult,
    )
    from workflows.retry import ACTIVITY_RETRY

PROGRESS_SIGNAL = "backfill_progress"


@workflow.defn
class BackfillWorkflow:
    """One table's backfill. Returns counts; signals its parent (if any) at every finished range."""

    def __init__(self) -> None:
        self._carry: BackfillCarry | None = None
        self._paused = False
        self._running: set[int] = set()
        self._failure: BaseException | None = None
        self._wake = 0
        self._source = ""
        self._target = ""

    @workflow.signal(name="set_paused", description="Hold (no new ranges) or resume the backfill. {paused}")
    def set_paused(self, *args: Any) -> None:
        # ``*args``: no input or JSON null must not reach workflow code as a TypeError / AttributeError (a
        # failing workflow task retries forever); bad input is dropped with a log line
        try:
            if len(args) != 1:
                raise ValueError(f"expected one object {{\"paused\": true|false}}, got {len(args)} values")
            state = PauseState.model_validate(args[0])
        except ValueError as exc:  # pydantic's ValidationError is one
            workflow.logger.warning("signal set_paused dropped: %s", str(exc).splitlines()[0][:200])
            return
        self._paused = state.paused
        self._wake += 1

    @workflow.query(name="progress", description="Rows copied, ranges done, ETA.")
    def progress(self, *_args: Any) -> BackfillProgress:
        return self._progress(self._source)

    @workflow.run
    async def run(self, inp: BackfillInput) -> BackfillResult:
        self._source = inp.table.source
        spec = inp.table.inline_spec()
        self._target = spec.table(inp.table.source).target_table
        tuning = inp.tuning
        hb = timedelta(seconds=tuning.heartbeat_timeout_seconds)
        if inp.carry is None:
            plan = await workflow.execute_activity(
                ActivityNames.PLAN_RANGES,
                PlanRangesInput(table=inp.table.by_ref(inp.spec_ref), ranges=inp.ranges or max(1, inp.concurrency * 2)),
                # planning heartbeats from a background thread while its queries run: a dead worker's plan
                # is picked up by another within the heartbeat timeout
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=hb,
                retry_policy=ACTIVITY_RETRY, result_type=RangePlan,
            )
            self._carry = BackfillCarry(plan=plan, started_at=workflow.now())
        else:
            self._carry = inp.carry
        carry = self._carry
        done = {r.index for r in carry.done}
        queue = [r for r in carry.plan.ranges if r.index not in done]
        self._details()
        draining = False
        while queue or self._running:
            if self._failure is not None:
                raise self._failure
            if not draining and workflow.info().is_continue_as_new_suggested():
                draining = True
            while queue and not draining and not self._paused and len(self._running) < max(1, inp.concurrency):
                r = queue.pop(0)
                self._running.add(r.index)
                asyncio.create_task(self._copy(inp, r))  # noqa: RUF006 - tracked through self._running
            if draining and not self._running:
                break
            await workflow.wait_condition(self._changed_since(self._wake))
        if self._failure is not None:
            raise self._failure
        if queue:
            # Temporal suggested continue-as-new: the finished ranges travel in the carry.
            carry.continued_as_new += 1
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(inp.model_copy(update={"carry": carry}))
        await workflow.execute_activity(
            ActivityNames.CLEAR_CHECKPOINTS,
            CheckpointScope(migration=spec.name, control_store=spec.control,
                            scope=f"{workflow.info().workflow_id}/{inp.table.source}"),
            start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=hb, retry_policy=ACTIVITY_RETRY,
        )
        results = sorted(carry.done, key=lambda r: r.index)
        started = carry.started_at or workflow.now()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return BackfillResult(
            source=inp.table.source, target=self._target, rows=sum(r.rows for r in results),
            rows_estimate=carry.plan.rows_estimate, ranges=len(results), batches=sum(r.batches for r in results),
            redone_batches=sum(r.redone_batches for r in results),
            resumed_ranges=sum(1 for r in results if r.resumed),
            continued_as_new=carry.continued_as_new,
            seconds=(workflow.now() - started).total_seconds(), range_results=results,
        )

    def _changed_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._wake != seen or self._failure is not None

    async def _copy(self, inp: BackfillInput, r: KeyRange) -> None:
        assert self._carry is not None
        try:
            result = await workflow.execute_activity(
                ActivityNames.COPY_RANGE,
                CopyRangeInput(table=inp.table.by_ref(inp.spec_ref), range=r),
                start_to_close_timeout=timedelta(hours=24),
                heartbeat_timeout=timedelta(seconds=inp.tuning.heartbeat_timeout_seconds),
                retry_policy=ACTIVITY_RETRY, result_type=RangeResult,
                summary=f"copy {inp.table.source} range {r.index + 1}/{len(self._carry.plan.ranges)}",
            )
        except BaseException as exc:  # noqa: BLE001 - hand it to run(), which fails the workflow
            self._failure = exc
            self._wake += 1
            return
        self._carry.done.append(result)
        self._running.discard(r.index)
        self._wake += 1
        await self._report()

    def _progress(self, source: str) -> BackfillProgress:
        carry = self._carry
        if carry is None:
            return BackfillProgress(source=source, rows_copied=0, rows_estimate=0, ranges_done=0, ranges_total=0)
        rows = sum(r.rows for r in carry.done)
        eta: float | None = None
        if carry.started_at is not None and rows > 0:
            elapsed = (workflow.now() - carry.started_at).total_seconds()
            rate = rows / max(elapsed, 0.001)
            eta = max(0.0, (carry.plan.rows_estimate - rows) / rate) if rate > 0 else None
        total = len(carry.plan.ranges)
        return BackfillProgress(source=source, rows_copied=rows, rows_estimate=carry.plan.rows_estimate,
                                ranges_done=len(carry.done), ranges_total=total, eta_seconds=eta,
                                done=len(carry.done) >= total)

    async def _report(self) -> None:
        """Coarse progress: the search attribute at 10 % steps, the parent at every finished range."""
        assert self._carry is not None
        p = self._progress(self._source)
        percent = 100 if p.done else min(99, int(100 * p.rows_copied / max(p.rows_estimate, 1)))
        step = percent // 10 * 10
        if step > self._carry.last_percent_step:
            self._carry.last_percent_step = step
            workflow.upsert_search_attributes([BACKFILL_PERCENT.value_set(step)])
        self._details()
        parent = workflow.info().parent
        if parent is not None:
            try:
                await workflow.get_external_workflow_handle(parent.workflow_id, run_id=parent.run_id).signal(
                    PROGRESS_SIGNAL, p)
            except Exception:  # noqa: BLE001 - progress is best effort; the result carries the truth
                workflow.logger.warning("could not report backfill progress to the parent")

    def _details(self) -> None:
        p = self._progress(self._source)
        eta = "–" if p.eta_seconds is None else f"{p.eta_seconds:.0f} s"
        workflow.set_current_details(
            f"**Backfill {self._source} → {self._target}**\n\n"
            "| rows copied | estimate | ranges | running | ETA |\n|---:|---:|---:|---:|---:|\n"
            f"| {p.rows_copied:,} | {p.rows_estimate:,} | {p.ranges_done}/{p.ranges_total} | "
            f"{len(self._running)} | {eta} |\n" + ("\n*paused: no new ranges start*" if self._paused else ""))
