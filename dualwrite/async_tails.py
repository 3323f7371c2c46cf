"""Under a write fence: the lost tails of killed ``async`` writers, mirrored into the gaining store before
authority moves.

An ``async`` writer acknowledges a write after the authoritative commit and mirrors it from a queue in its own
process. Killed with keys queued, it takes them along: acknowledged writes the losing store holds and the
gaining store may not. The fence's drain cannot see them (they were never in the repair queue), so without this
a flip made them the losing side's only copy, and the next verification in the new direction "repaired" them
away ([T2-5]). The gate's verification before a cutover finds such a tail only when the writer died before it
ran, and a forced advance or a rollback need no gate.

Each async writer records a watermark (:mod:`dualwrite.watermark`); one that stops cleanly removes it. So under
the fence, with every live writer's queue drained (the barrier passed), a watermark that does not pass *now*
belongs to a writer that died with its tail: then the async tables are compared from the losing store to the
gaining one and repaired, under the repair guard of the fence's own drain. Writes are held by the fence, so the
comparison is exact. Once the whole migration is level the dead writers' rows are removed; a tenant's fence
levels only that tenant's rows and leaves them for the other scopes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dualwrite import tenancy, watermark
from dualwrite.async_settle import DEAD_AFTER_SECONDS, wait_for_writers
from dualwrite.errors import VerificationError
from dualwrite.mapping import TableMapping
from dualwrite.repair import repair
from dualwrite.repair_guard import RepairGuard
from dualwrite.store import Store
from dualwrite.verify import VerifyReport, verify_range

__all__ = ["LostTails", "TableSides", "level_lost_tails"]

log = logging.getLogger("dualwrite.verify")

#: (table, source: the losing store, target: the gaining store, mapping source -> target)
TableSides = tuple[str, Store, Store, TableMapping]


@dataclass
class LostTails:
    """What was done (counts and writer ids only, never keys)."""

    writers: list[str]
    """writers whose watermark did not pass: killed with keys queued, or stuck"""
    compared: int = 0
    repaired: int = 0
    forgotten: int = 0


def level_lost_tails(control: Store, migration: str, tables: Sequence[TableSides], *, losing: str,
                     tenant: str | None = None, exclude_tenants: Sequence[str] = (), settle_timeout: float = 20.0,
                     sleep: Callable[[float], None] = time.sleep,
                     on_table: Callable[[str], None] | None = None) -> LostTails:
    """Level the gaining store with the losing one for ``tables`` (the async ones) when a writer died with its
    queue; ``losing``: 'old' / 'new', the store still authoritative under the fence. Raises
    :class:`VerificationError` when a table stays different after the repair (authority must not move then).
    ``exclude_tenants``: for the whole migration's flip, the tenants whose own authority runs the other way (their
    rows are left alone, as a migration-wide verification leaves them)."""
    since = watermark.db_now(control)
    # a live writer's queue is empty behind the fence: its watermark passes within a heartbeat
    wait_for_writers(control, migration, since, timeout=settle_timeout, sleep=sleep)
    behind = [m.writer_id for m in watermark.marks(control, migration, since, live_seconds=DEAD_AFTER_SECONDS)
              if not m.passed]
    out = LostTails(writers=behind)
    if not behind:
        return out
    log.warning("migration %s: %d async writer(s) stopped with keys queued (%s); comparing %d table(s) %s -> "
                "gaining store under the write fence", migration, len(behind), ", ".join(behind[:5]), len(tables),
                losing)
    for name, src, dst, mapping in tables:
        if on_table is not None:
            on_table(name)
        by_tenant = tenant is None and bool(mapping.tenant_column)
        guard = RepairGuard(control, migration, losing, tenant, under_fence=True,
                            other_tenants=exclude_tenants if by_tenant else None)
        report: VerifyReport = (tenancy.verify_tenant(src, dst, mapping, tenant) if tenant is not None
                                else verify_range(src, dst, mapping, allow_empty=True))
        if by_tenant and exclude_tenants:
            report = tenancy.without_tenants(report, src, dst, mapping, exclude_tenants)
        out.compared += report.rows_source
        if report.ok:
            continue
        with guard.holding():
            fixed = repair(src, dst, mapping, report)
        out.repaired += fixed.repaired_keys
        if not fixed.after.ok:
            raise VerificationError(
                f"migration {migration}: table {name} still differs after repairing the lost tail of a killed "
                f"async writer under the write fence (missing {fixed.after.missing}, extra {fixed.after.extra}, "
                f"field-different {fixed.after.field_different})")
    if tenant is None:
        for writer_id in behind:
            watermark.forget(control, migration, writer_id)
        out.forgotten = len(behind)
    return out
