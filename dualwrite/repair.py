"""Repair: make the differing keys of a verification equal the authoritative store, then prove it.

Every difference is settled by the one mirror primitive (rule 1, docs/architecture.md) with ``force=True``: the row
image of the authoritative store wins even where a version guard would refuse it, because a verifier
has just shown the target to be wrong. Pass ``mapping.reversed()`` (and the stores swapped) after write
cutover, when the new store is the authority.

A repair is only as good as its re-verification: the mismatching chunk ranges of the report are verified
again (or, for a report without ranges, its keys), and that report is returned. A report whose list of
differences was capped is repaired in further rounds, each fed by the previous re-verification, while
every round still reduces the number of differences.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.canonical import encode_row
from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult, mirror_keys
from dualwrite.store import Store
from dualwrite.stores import kind_for
from dualwrite.verify import VerifyReport, verify_keys, verify_ranges

log = logging.getLogger("dualwrite.repair")

#: repaired keys named in the worker log per table and call (the count is always complete)
LOGGED_KEYS = 50
LOG_KEYS_ENV = "DUALWRITE_LOG_KEYS"
"""Set to 1 to log repaired keys in clear (by default: short hashes, see :func:`key_hash`)."""


def keys_in_clear() -> bool:
    return os.environ.get(LOG_KEYS_ENV, "").strip().lower() in ("1", "true", "yes")


def key_hash(key: Sequence[Any]) -> str:
    """A short hash of a key, the same in every process: ``python -c "from dualwrite.repair import key_hash;
    print(key_hash((42,)))"`` finds a known key's lines in the log without the log holding the key."""
    return hashlib.sha256(encode_row(tuple(key))).hexdigest()[:12]

#: hard stop for capped reports: rounds x max_differences keys at most per repair call
MAX_ROUNDS = 50


@dataclass
class RepairResult:
    repaired_keys: int
    upserted: int
    deleted: int
    after: VerifyReport

    def summary(self) -> dict[str, object]:
        """Counts only (no keys or values): safe for logs and Temporal history."""
        return {"repaired_keys": self.repaired_keys, "upserted": self.upserted, "deleted": self.deleted,
                "after": self.after.summary()}


def _reverify(source: Store, target: Store, mapping: TableMapping, report: VerifyReport) -> VerifyReport:
    """The ranges that differed again (or the keys). A source that reads no key range (Redis) verified one
    "range", a SCAN of the whole table: re-walking it under live writes finds writes made since, whose own
    mirror is on its way, and never settles; unless the report was truncated (keys left to find), its keys
    are re-checked instead, as the differing keys of a small SQL chunk are."""
    method = report.method if report.method in ("pushdown", "python") else None
    ranged = report.truncated or kind_for(source).capabilities(source).range_reads
    if report.mismatched_ranges and ranged:
        return verify_ranges(source, target, mapping, report.mismatched_ranges, allow_empty=True,
                             max_differences=report.max_differences, method=method)
    return verify_keys(source, target, mapping, report.keys(), allow_empty=True,
                       max_differences=report.max_differences)


def repair(source: Store, target: Store, mapping: TableMapping, report: VerifyReport) -> RepairResult:
    """Mirror every differing key of ``report`` from ``source`` to ``target``, then re-verify.

    ``after`` is the re-verification of the affected chunk ranges (or keys); ``after.ok`` means the
    repair held. Under live traffic ``after`` may show rows written since, which the next verification
    or the mirror path settles.
    """
    total = MirrorResult()
    current = report
    for _ in range(MAX_ROUNDS):
        keys = current.keys()
        if not keys:
            break
        total += mirror_keys(source, target, mapping, keys, force=True)
        # the operator must be able to tell which keys a repair rewrote: a repair that "fixed" good data is the
        # worst outcome, and this line is how it is found afterwards. Keys are data (an e-mail address is a
        # key): short hashes by default, stable across processes (key_hash), in clear only when asked
        shown = ([list(k) for k in keys[:LOGGED_KEYS]] if keys_in_clear()
                 else [key_hash(k) for k in keys[:LOGGED_KEYS]])
        log.warning("repair %s -> %s of %s: %d keys rewritten from %s; keys%s: %s%s", source.name, target.name,
                    mapping.target_table, len(keys), source.name, "" if keys_in_clear() else " (hashed)", shown,
                    " ..." if len(keys) > LOGGED_KEYS else "")
        after = _reverify(source, target, mapping, current)
        progressed = after.total_differences < current.total_differences
        current = after
        if after.ok or not report.truncated or not progressed:
            break
    if current is report:  # nothing to repair: still prove the ranges (or keys) are equal
        current = _reverify(source, target, mapping, report)
    return RepairResult(repaired_keys=total.keys, upserted=total.upserted, deleted=total.deleted, after=current)
