"""Verification: compare one table chunk by chunk, repair what differs (when asked) and verify again."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating, raise_if_stopping, sleep, stopping
from activities.stores import StoreCache
from dualwrite import hooks
from dualwrite.async_settle import settle_async, wait_for_writers
from dualwrite.capture import method_for
from dualwrite.capture.store_side import store_side
from dualwrite.errors import RepairRefusedError
from dualwrite.inflight import Key, Settle, settle_in_flight
from dualwrite.mapping import TableMapping
from dualwrite.repair_guard import RepairGuard
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.store import Store
from workflows.models import ActivityNames, TableRef, TableVerification, VerifyTableInput

__all__ = ["REPAIR_ROUNDS", "VerifyActivities"]

REPAIR_ROUNDS = 3
"""Repairs (or, comparing only, re-checks) of what still differs: under live traffic a write caught between
its two commits settles within moments."""


class VerifyActivities:
    """The verification activity, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache) -> None:
        self.stores = stores

    @activity.defn(name=ActivityNames.VERIFY_TABLE, no_thread_cancel_exception=True)
    def verify_table(self, inp: VerifyTableInput) -> TableVerification:
        """Verify one table chunk by chunk; repair what differs and verify again.

        Returns counts by class (missing / extra / field-different) and the names of differing columns;
        never a row value. Comparing zero rows raises VerificationError: a verifier must prove it looked."""
        with mapped_errors(), heartbeating():
            from dualwrite import tenancy  # noqa: PLC0415 - heavy, and only here
            from dualwrite.verify import verify_range  # noqa: PLC0415

            spec, src, dst, mapping = self.stores.table(inp.table)
            lagged = spec.strategy_of(inp.table.source) is Strategy.ASYNC
            if lagged:  # keys still queued in live async writers are late, not lost: let them land first
                settled = wait_for_writers(self.stores.control_store(spec.control), spec.name, sleep=_sleep_or_stop)
                activity.heartbeat({"async_writers": settled.live, "settled": settled.settled})
            chunks = [0]

            def on_chunk(*_args: Any, **_kwargs: Any) -> None:
                chunks[0] += 1
                activity.heartbeat({"chunks": chunks[0]})
                if activity.is_cancelled():
                    raise_if_stopping()

            if inp.tenant is not None:
                report = tenancy.verify_tenant(src, dst, mapping, inp.tenant)
                activity.heartbeat({"tenant_keys": report.rows_source + report.rows_target})
            else:
                report = verify_range(src, dst, mapping, chunk_size=inp.chunk_size, on_chunk=on_chunk,
                                      allow_empty=spec.table(inp.table.source).allow_empty)
                # rows of tenants whose authority runs the other way are theirs to verify, never ours to repair
                report = tenancy.without_tenants(report, src, dst, mapping, inp.exclude_tenants)
            out = TableVerification(
                source=inp.table.source, target=mapping.target_table, rows_source=report.rows_source,
                rows_target=report.rows_target, chunks=report.chunks, mismatched_chunks=report.mismatched_chunks,
                missing=report.missing, extra=report.extra, field_different=report.field_different,
                fields=sorted(report.field_counts), ok=report.ok)
            if not report.ok:
                settle = self._in_flight_filter(spec, inp.table, src, dst, mapping)
                if lagged:
                    settle = settle_async(self.stores.control_store(spec.control), spec.name, src, dst, mapping,
                                          settle, sleep=_sleep_or_stop)
                if inp.repair:
                    others = inp.exclude_tenants if inp.tenant is None and mapping.tenant_column else None
                    guard = RepairGuard(self.stores.control_store(spec.control), spec.name,
                                        "new" if inp.table.reverse else "old", inp.tenant, any_tenant_fence=True,
                                        other_tenants=others)
                    _repair(out, report, src, dst, mapping, settle, guard)
                else:
                    _recheck(out, report, src, dst, mapping, settle)
            return out

    def _in_flight_filter(self, spec: MigrationSpec, table: TableRef, src: Store, dst: Store,
                          mapping: TableMapping) -> Settle:
        """Split a report's differences into those whose change the capture still holds on either store (in
        flight: returned as a count) and the rest (a new report). Inline methods relay nothing: the report
        is returned as it is."""
        if method_for(spec.strategy).inline:
            return lambda report: (report, 0)
        side = store_side(spec)
        ctl = self.stores.control_store(spec.control)
        source = table.source
        other = self.stores.table(table.model_copy(update={"reverse": not table.reverse}))[3]

        def pending() -> set[Key]:
            return (side.pending_keys(src, ctl, spec.name, source, mapping)
                    | side.pending_keys(dst, ctl, spec.name, source, other))

        return settle_in_flight(src, dst, mapping, pending)


def _sleep_or_stop(seconds: float) -> None:
    """Sleep between polls of the async watermarks; a cancelled activity or a stopping worker ends the wait."""
    sleep(seconds)
    raise_if_stopping()


def _recheck(out: TableVerification, report: Any, src: Store, dst: Store, mapping: TableMapping,
             settle: Settle) -> None:
    """Compare only (a gate's evidence): a write caught between its two commits settles within moments, so
    only differences that persist on a re-check count as unresolved."""
    from dualwrite import tenancy  # noqa: PLC0415 - heavy, and only here
    from dualwrite.verify import verify_keys  # noqa: PLC0415

    after, out.in_flight = settle(report)
    for attempt in range(REPAIR_ROUNDS - 1):
        if after.ok or stopping():
            break
        sleep(0.5 * (attempt + 1))
        activity.heartbeat({"recheck": attempt + 1})
        after, out.in_flight = settle(verify_keys(src, dst, mapping, after.keys(), allow_empty=True))
    unseen = max(0, report.total_differences - len(report.differences))
    out.unresolved = after.total_differences + unseen
    out.sample_keys = tenancy.describe_keys(after.keys() or report.keys())
    out.ok = out.unresolved == 0


def _repair(out: TableVerification, report: Any, src: Store, dst: Store, mapping: TableMapping,
            settle: Settle, guard: RepairGuard) -> None:
    """Repair, then verify again, a few times: under live traffic a re-verification can catch a write between
    its authoritative commit and its mirror. Keys whose change the capture still holds are in flight: the
    relay mirrors them in the direction of the write, and a repair must not overwrite one logged by the
    other side. Each round runs under the repair guard: once authority has moved (or while the write fence
    is up) nothing is copied in the direction this verification started with."""
    from dualwrite import tenancy  # noqa: PLC0415 - heavy, and only here
    from dualwrite.repair import repair  # noqa: PLC0415

    after, out.in_flight = settle(report)
    refused = ""
    for attempt in range(REPAIR_ROUNDS):
        if after.ok or stopping():
            break
        if attempt:
            sleep(0.5 * attempt)
            activity.heartbeat({"repair_round": attempt + 1})
        hooks.point("verify.before_repair", table=mapping.target_table)
        try:
            with guard.holding():
                fixed = repair(src, dst, mapping, after)
        except RepairRefusedError as exc:
            refused = str(exc)
            break
        out.repaired += fixed.repaired_keys
        after, out.in_flight = settle(fixed.after)
    out.ok = after.ok
    out.unresolved = after.total_differences
    if not out.ok:
        out.sample_keys = tenancy.describe_keys(after.keys())
        out.error = refused or (f"still different after repair: missing {after.missing}, extra {after.extra}, "
                                f"field-different {after.field_different}")
