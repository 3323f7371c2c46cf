"""Keys still waiting in a key log are in flight, not differences: ``activities.core.without_keys`` leaves
them out of a verification report (counts by class and per column adjusted), and keeps every difference it
cannot classify (those beyond the report's cap)."""

from __future__ import annotations

from activities.core import without_keys
from dualwrite.verify import Difference, DiffKind, FieldDiff, VerifyReport


def _report() -> VerifyReport:
    r = VerifyReport(table="t", rows_source=10, rows_target=9, chunks=1, mismatched_chunks=1)
    r.add(Difference(key=(1,), kind=DiffKind.MISSING))
    r.add(Difference(key=(2,), kind=DiffKind.FIELD, fields=[FieldDiff("name", "a", "b")]))
    r.add(Difference(key=(3,), kind=DiffKind.FIELD, fields=[FieldDiff("name", "c", "d"), FieldDiff("n", 1, 2)]))
    r.add(Difference(key=(4,), kind=DiffKind.EXTRA))
    return r


def test_in_flight_keys_are_left_out_with_their_counts() -> None:
    kept, flying = without_keys(_report(), {(1,), (3,), (99,)})
    assert flying == 2
    assert kept.keys() == [(2,), (4,)]
    assert (kept.missing, kept.extra, kept.field_different) == (0, 1, 1)
    assert kept.field_counts == {"name": 1}
    assert not kept.ok and kept.rows_source == 10


def test_all_in_flight_is_clean_and_nothing_in_flight_is_the_same_report() -> None:
    report = _report()
    kept, flying = without_keys(report, {(1,), (2,), (3,), (4,)})
    assert kept.ok and flying == 4
    assert without_keys(report, set()) == (report, 0)
    assert without_keys(report, {(42,)}) == (report, 0)


def test_differences_beyond_the_cap_stay_counted() -> None:
    r = VerifyReport(table="t", max_differences=1)
    r.add(Difference(key=(1,), kind=DiffKind.MISSING))
    r.add(Difference(key=(2,), kind=DiffKind.MISSING))  # counted, not listed
    kept, flying = without_keys(r, {(1,)})
    assert flying == 1 and kept.missing == 1 and not kept.ok and kept.differences == []
