"""Differences that are only in flight: a key whose change the capture holds and has not mirrored yet.

A verification under live traffic with a relayed capture method sees rows written on the authoritative store
whose change still waits in a key log or the database's log. The relay mirrors each in the direction of the
write that logged it, and a repair must not overwrite it; so such a difference is counted as in flight, not
as a difference. Only what still differs with no pending change, before or after a second look, counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dualwrite.mapping import TableMapping
from dualwrite.mirror import normal_key
from dualwrite.store import Store
from dualwrite.verify import DiffKind, VerifyReport, verify_keys

__all__ = ["Settle", "settle_in_flight", "without_keys"]

Key = tuple[object, ...]
Settle = Callable[[VerifyReport], tuple[VerifyReport, int]]
"""A report -> (the report without in-flight differences, how many were in flight)."""


def without_keys(report: VerifyReport, keys: set[Key]) -> tuple[VerifyReport, int]:
    """``report`` without the differences of ``keys`` (counts adjusted), and how many were left out.

    Differences beyond the report's cap were never listed: they stay counted (they may be real)."""
    if not keys:
        return report, 0
    flying = [d for d in report.differences if normal_key(tuple(d.key)) in keys]
    if not flying:
        return report, 0
    field_counts = dict(report.field_counts)
    for d in flying:
        for f in d.fields:
            field_counts[f.name] = field_counts.get(f.name, 0) - 1
    kept = dataclasses.replace(
        report, differences=[d for d in report.differences if normal_key(tuple(d.key)) not in keys],
        missing=report.missing - sum(d.kind is DiffKind.MISSING for d in flying),
        extra=report.extra - sum(d.kind is DiffKind.EXTRA for d in flying),
        field_different=report.field_different - sum(d.kind is DiffKind.FIELD for d in flying),
        field_counts={k: v for k, v in field_counts.items() if v > 0},
        mismatched_ranges=list(report.mismatched_ranges))
    return kept, len(flying)


def settle_in_flight(src: Store, dst: Store, mapping: TableMapping, pending: Callable[[], set[Key]]) -> Settle:
    """A :data:`Settle` for one table: ``pending()`` names the keys in flight on either store now.

    A listed difference with no pending change is compared once more: the relay may have taken its entry
    between the comparison and the look-up (then the row is level now)."""

    def settle(report: VerifyReport) -> tuple[VerifyReport, int]:
        if report.ok or not report.differences:
            return report, 0
        kept, flying = without_keys(report, pending())
        if kept.ok or kept.truncated:
            return kept, flying
        again = verify_keys(src, dst, mapping, kept.keys(), allow_empty=True)
        again, more = without_keys(again, pending())
        return again, flying + more

    return settle
