"""VerificationWorkflow: compare every table chunk by chunk, repair what differs, verify again.

One activity per table does the whole compare / narrow / repair / re-verify cycle, because the keys that
differ must not travel through history: only counts by class (missing, extra, field-different) and the
names of differing columns come back. A table that compared zero rows is a failure, never a pass
(rule 9, docs/architecture.md): its error is recorded, the summary is not ok, and no gate passes on it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.models import (
        ActivityNames,
        TableVerification,
        VerificationSummary,
        VerifyInput,
        VerifyTableInput,
    )
    from workflows.relay import RELAY_CLEAR_LOSSES, RELAY_LOSS_MARKS, ClearLossesInput, LossMarksInput
    from workflows.retry import CLEAR_LOSSES_RETRY, VERIFY_TABLE_RETRY

CLEAR_LOSSES_PATCH = "verify-clears-capture-losses"
"""A clean verification with repair of a whole ``cdc`` migration clears the capture-loss marks noted before it
(an activity added to histories from before this patch)."""
LOSS_MARKS_PATCH = "verify-reads-capture-loss-sequence"
"""The verification reads each store's capture-loss sequence as it starts (an activity) and clears only losses
up to it; histories from before compared the loss's worker clock with the workflow's start."""


def failure_message(exc: BaseException) -> str:
    """The innermost Temporal failure message (an activity's ApplicationError), for status and history."""
    cause: BaseException | None = exc
    msg = str(exc)
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return f"{cause.type or 'error'}: {cause.message}" if cause.type else cause.message
        msg = str(cause) or msg
        cause = cause.__cause__
    return msg


@workflow.defn
class VerificationWorkflow:
    """Verify (and by default repair) the tables of one migration in one direction."""

    def __init__(self) -> None:
        self._done: list[TableVerification] = []
        self._total = 0

    @workflow.query(name="progress", description="Tables verified so far.")
    def progress(self, *_args: Any) -> list[TableVerification]:
        return list(self._done)

    @workflow.run
    async def run(self, inp: VerifyInput) -> VerificationSummary:
        started = workflow.now()
        tables = inp.tables or [t.source for t in (inp.spec.tenant_tables if inp.tenant else inp.spec.tables)]
        self._total = len(tables)
        direction = "new->old" if inp.reverse else "old->new"
        direction_note = f" for tenant {inp.tenant}" if inp.tenant is not None else ""
        workflow.set_current_details(f"verifying {len(tables)} tables ({direction}{direction_note})")
        marks: dict[str, int] | None = None
        by_sequence = (inp.repair and self._levels_everything(inp, tables)
                       and workflow.patched(LOSS_MARKS_PATCH))
        if by_sequence:
            marks = await self._capture_loss_marks(inp)
        limit = asyncio.Semaphore(max(1, inp.spec.backfill_concurrency))
        # the activity also heartbeats from a background thread between chunks (a tenant's verification,
        # a repair round are single long calls): a dead worker is noticed within 30 s whatever the tuning
        hb = timedelta(seconds=min(30.0, inp.tuning.verify_heartbeat_seconds))

        async def one(source: str) -> TableVerification:
            async with limit:
                result: TableVerification
                try:
                    result = await workflow.execute_activity(
                        ActivityNames.VERIFY_TABLE,
                        VerifyTableInput(table=inp.table(source),
                                         repair=inp.repair, chunk_size=inp.tuning.verify_chunk_size,
                                         tenant=inp.tenant, exclude_tenants=inp.exclude_tenants),
                        start_to_close_timeout=timedelta(hours=12), heartbeat_timeout=hb,
                        retry_policy=VERIFY_TABLE_RETRY,
                        result_type=TableVerification, summary=f"verify {source} ({direction})",
                    )
                except ActivityError as exc:
                    target = inp.spec.table(source).target_table
                    result = TableVerification(source=source, target=target, ok=False,
                                               error=failure_message(exc))
                self._done.append(result)
                self._render(direction)
                return result

        results = list(await asyncio.gather(*(one(s) for s in tables)))
        compared = sum(r.rows_source for r in results)
        # every table must prove it looked; a tenant may own no row of one table, but of some table; a table
        # the spec marks allow_empty may hold no row at all
        allowed = {t.source for t in inp.spec.tables if t.allow_empty}
        looked = compared > 0 if inp.tenant is not None else (
            compared > 0 or all(r.source in allowed for r in results)) and all(
            r.rows_source > 0 or r.rows_target > 0 or r.source in allowed for r in results)
        ok = all(r.ok and not r.error for r in results) and looked
        summary = VerificationSummary(
            at=workflow.now(), ok=ok, rows_compared=compared, missing=sum(r.missing for r in results),
            extra=sum(r.extra for r in results), field_different=sum(r.field_different for r in results),
            repaired=sum(r.repaired for r in results), direction=direction, tables=results,
            unresolved=sum(r.unresolved for r in results), repair=inp.repair, tenant=inp.tenant,
        )
        if ok and summary.repaired:
            workflow.logger.warning(
                "verification %s repaired %d rows in the %s store (missing %d, extra %d, field-different %d); "
                "the repaired keys are in the worker log", direction, summary.repaired, summary.repaired_into,
                summary.missing, summary.extra, summary.field_different)
        # the sequence unread (by_sequence, marks None): the marks stay; the gate counts them levelled anyway
        if (ok and inp.repair and self._levels_everything(inp, tables) and workflow.patched(CLEAR_LOSSES_PATCH)
                and (not by_sequence or marks is not None)):
            await self._clear_capture_losses(inp, started, marks)
        if not ok:
            workflow.logger.warning(
                "verification %s is NOT clean: compared %d rows, missing %d, extra %d, field-different %d; %s",
                direction, compared, summary.missing, summary.extra, summary.field_different,
                "; ".join(f"{r.source}: {r.error}" for r in results if r.error) or "see tables")
        return summary

    @staticmethod
    def _levels_everything(inp: VerifyInput, tables: list[str]) -> bool:
        """Log capture (``cdc``) can note losses; this verification covered every row of every table."""
        return (inp.spec.strategy.value == "cdc" and inp.tenant is None and not inp.exclude_tenants
                and set(tables) >= {t.source for t in inp.spec.tables})

    async def _capture_loss_marks(self, inp: VerifyInput) -> dict[str, int] | None:
        """Each store's capture-loss sequence now (None when it cannot be read: then nothing is cleared)."""
        spec: dict[str, Any] = {"spec_ref": inp.spec_ref} if inp.spec_ref is not None else {"spec": inp.spec}
        try:
            marks: dict[str, int] = await workflow.execute_activity(
                RELAY_LOSS_MARKS, LossMarksInput(**spec), start_to_close_timeout=timedelta(minutes=2),
                retry_policy=CLEAR_LOSSES_RETRY, result_type=dict[str, int],
                summary="read the capture-loss sequence")
        except ActivityError as exc:
            workflow.logger.warning("capture-loss sequence not read (marks will not be cleared): %s",
                                    failure_message(exc))
            return None
        return marks

    async def _clear_capture_losses(self, inp: VerifyInput, started: Any,
                                    marks: dict[str, int] | None = None) -> None:
        """The stores are level: what capture missed before this verification started is repaired, so the
        relay's status stops listing it. A failure here leaves the marks (the gate counts them levelled
        anyway) and never fails the verification."""
        spec: dict[str, Any] = {"spec_ref": inp.spec_ref} if inp.spec_ref is not None else {"spec": inp.spec}
        try:
            await workflow.execute_activity(
                RELAY_CLEAR_LOSSES, ClearLossesInput(**spec, before=started, upto=marks),
                start_to_close_timeout=timedelta(minutes=2), retry_policy=CLEAR_LOSSES_RETRY,
                result_type=int, summary="clear levelled capture losses")
        except ActivityError as exc:
            workflow.logger.warning("capture-loss marks not cleared: %s", failure_message(exc))

    def _render(self, direction: str) -> None:
        lines = [f"**Verification {direction}** ({len(self._done)}/{self._total} tables)", "",
                 "| table | rows | missing | extra | field-diff | repaired | ok |",
                 "|---|---:|---:|---:|---:|---:|:-:|"]
        for r in self._done:
            lines.append(f"| {r.source} | {r.rows_source:,} | {r.missing} | {r.extra} | {r.field_different} | "
                         f"{r.repaired} | {'✅' if r.ok else '❌ ' + r.error[:60]} |")
        workflow.set_current_details("\n".join(lines))
