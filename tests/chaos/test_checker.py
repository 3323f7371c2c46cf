"""The chaos checker can fail: fed an acknowledgement log and store contents with a lost write, a reverted
update or a resurrected delete, it counts each one (and accepts what a failed, unacknowledged write may have
left). A checker that always says 0 would make every chaos run pass."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chaos import (
    DELETED,
    DOCS,
    PAIRS,
    TABLE,
    AckLog,
    CheckResult,
    check_acknowledged,
    check_told_failed,
    compare_stores,
)

A = (TABLE, (1,))
B = (PAIRS, (-20000001, "eu"))
C = (DOCS, ("0000aaaa-1111-4222-8333-444455556666",))
D = (TABLE, (0,))


def _log() -> AckLog:
    log = AckLog()
    log.ack(A, ("v", "a-2", 2), op="update_keep_version", phase="CUTOVER_WRITES")
    log.ack(B, DELETED, op="delete_for_reinsert", phase="CUTOVER_WRITES")
    log.ack(B, ("v", "b-re", 3), op="reinsert", phase="CUTOVER_WRITES")
    log.ack(C, ("v", "c-1", 1), op="insert_low", phase="DUAL_WRITE")
    log.ack(C, DELETED, op="delete", phase="BACKFILL")
    log.ack(D, ("v", "d-1", 1), op="update", phase="SHADOW_READ")
    return log


def test_a_store_holding_every_last_acknowledged_write_passes() -> None:
    stored = {A: ("a-2", 2, 7), B: ("b-re", 3, 1), D: ("d-1", 1, 2)}
    res = check_acknowledged(_log(), stored)
    assert (res.checked, res.lost, res.reverted, res.resurrected) == (4, 0, 0, 0)


def test_lost_reverted_and_resurrected_writes_are_each_counted() -> None:
    stored = {
        A: ("a-1", 1, 7),  # the last acknowledged update reverted to an earlier value
        # B: the re-insert acknowledged after its delete is gone
        C: ("c-1", 1, 1),  # the acknowledged delete came back
        D: ("d-1", 1, 2),  # fine
    }
    res = check_acknowledged(_log(), stored)
    assert (res.lost, res.reverted, res.resurrected) == (1, 1, 1)
    assert res.lost_acknowledged == 2
    kinds = {(f.key, f.kind, f.op) for f in res.findings}
    assert kinds == {(A, "reverted", "update_keep_version"), (B, "lost", "reinsert"), (C, "resurrected", "delete")}
    assert "lost/reinsert=1" in res.by("op") and "reverted/CUTOVER_WRITES=1" in res.by("phase")


def test_a_failed_write_after_the_last_acknowledged_one_may_or_may_not_be_there() -> None:
    log = _log()
    log.uncertain(A, ("v", "a-3", 3), op="update", error="OperationalError: refused")
    log.uncertain(C, ("v", "c-2", 2), op="insert_high")
    stored = {A: ("a-3", 3, 8), B: ("b-re", 3, 1), C: ("c-2", 2, 1), D: ("d-1", 1, 2)}
    assert check_acknowledged(log, stored).lost_acknowledged == 0
    assert check_acknowledged(log, stored).resurrected == 0
    # ... but an acknowledged write after the failed one decides again
    log.ack(A, ("v", "a-4", 4), op="update")
    res = check_acknowledged(log, stored)
    assert (res.lost, res.reverted) == (0, 1)
    assert log.failed == 2


def test_a_write_refused_before_its_commit_is_not_a_possible_outcome() -> None:
    """Refused for certain (the statement failed, nothing committed): its value must not appear, unlike a write
    whose COMMIT failed."""
    log = _log()
    log.refused(D, ("v", "d-2", 2), op="update", phase="CUTOVER_WRITES", error="OperationalError: table moved")
    stored = {A: ("a-2", 2, 7), B: ("b-re", 3, 1), D: ("d-2", 2, 3)}
    res = check_acknowledged(log, stored)
    assert (res.lost, res.reverted, res.resurrected) == (0, 1, 0)
    assert (log.failed, log.refusals) == (1, 1)


def test_a_write_told_failed_is_found_in_either_store() -> None:
    """``strict``: a request that raised must have changed neither store. Its value in the authoritative store
    or in the other one counts; so does a failed delete whose key is gone while its last acknowledged write
    gave it a value. A later acknowledged delete puts an earlier failed delete out of account."""
    log = _log()
    log.told(A, ("v", "a-3", 3), op="update", phase="CUTOVER_WRITES", error="StrictWriteError: authoritative")
    log.uncertain(A, ("v", "a-3", 3), op="update")
    log.told(D, DELETED, op="delete", phase="SHADOW_READ", error="StrictWriteError: secondary")
    log.told(C, ("v", "c-2", 2), op="insert_high", error="OperationalError: refused")
    auth = {A: ("a-2", 2, 7), B: ("b-re", 3, 1), D: ("d-1", 1, 2)}
    clean = CheckResult()
    check_told_failed(log, (auth, dict(auth)), clean)
    assert (clean.told_failed, clean.failed_present) == (3, 0)

    other = {A: ("a-3", 3, 8), B: ("b-re", 3, 1)}  # the failed update reached the other store, D's delete too
    found = CheckResult()
    check_told_failed(log, (auth, other), found)
    assert found.failed_present == 2
    assert {(f.key, f.kind, f.error[:16]) for f in found.findings} == {
        (A, "failed-present", "StrictWriteError"), (D, "failed-present", "StrictWriteError")}

    log.ack(D, DELETED, op="delete", phase="CUTOVER_WRITES")  # a later acknowledged delete: D may be gone
    later = CheckResult()
    check_told_failed(log, (auth, other), later)
    assert later.failed_present == 1


def test_the_ack_log_file_records_every_attempt(tmp_path: Path) -> None:
    path = tmp_path / "acks.jsonl"
    log = AckLog(path=path)
    log.ack(A, ("v", "a-1", 1), op="insert_high", phase="DUAL_WRITE")
    log.uncertain(A, DELETED, op="delete", phase="CUTOVER_WRITES", error="OperationalError: the table moved")
    log.close()
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["op"], r["acked"]) for r in recs] == [("insert_high", True), ("delete", False)]
    assert recs[1]["error"].startswith("OperationalError") and recs[0]["key"] == [1]


def test_store_comparison_counts_missing_extra_and_different_rows() -> None:
    auth = {A: ("a", 1, 1), B: ("b", 1, 1), C: ("c", 1, 1)}
    other = {A: ("a", 1, 1), B: ("b", 1, 2), D: ("d", 1, 1)}
    d = compare_stores(auth, other)
    assert (d.missing, d.extra, d.different, d.total) == ([C], [D], [B], 3)
