"""Compare the *set of keys* in one key range on both sides, cheaply.

After a backfill chunk commits, a live delete that raced the copy would leave a resurrected row in the
target. Comparing key sets finds it, and anything a live mirror has not delivered yet; the differing keys
then go through the mirror primitive.

Where both stores digest keys by the same scheme (two PostgreSQL or two MariaDB stores) the comparison
is a digest first (row count and the XOR of a 64-bit hash of every key, one aggregate per side,
:meth:`dualwrite.stores.MappedTable.key_digest`), and a key-by-key diff only when they differ. Across
engines the sides would have to agree on a hash, and the portable one (MD5 of the key's text) costs
three times more than reading the keys of a 50k chunk from both sides and comparing the two ordered
lists in C; so cross-engine pairs (and SQLite, which has no hash function) compare key lists.

A target that cannot read key ranges (Redis) could list a range's keys only by scanning its whole keyspace,
once per chunk: a backfill quadratic in the table's size. The backfill knows which keys it *wrote* in the
chunk, though, and those are the only target keys it can have put there: so the source's keys now are
compared with the written ones (:func:`written_differences`), and only keys in one list and not the other
are looked up in the target. Keys the target held before the backfill and the source lacks are
verification's to find (one scan per run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult, mirror_keys
from dualwrite.store import Store
from dualwrite.stores import Key, MappedTable, Role, kind_for


def digests_match(sconn: Any, src: MappedTable, tconn: Any, dst: MappedTable, lo: Key | None, hi: Key | None
                  ) -> bool | None:
    """True/False when both sides digest their keys alike, else None (the caller diffs keys)."""
    s_digest = src.key_digest(sconn, lo, hi)
    if s_digest is None:
        return None
    t_digest = dst.key_digest(tconn, lo, hi)
    if t_digest is None or t_digest[0] != s_digest[0]:
        return None
    return s_digest == t_digest


def key_differences(sconn: Any, src: MappedTable, tconn: Any, dst: MappedTable, lo: Key | None, hi: Key | None
                    ) -> tuple[list[Key], list[Key]]:
    """Keys in ``lo < key <= hi`` present only in the source, and only in the target."""
    skeys = src.range_keys(sconn, lo, hi)
    tkeys = dst.range_keys(tconn, lo, hi)
    if skeys == tkeys:  # the common case, compared in C
        return [], []
    sset, tset = set(skeys), set(tkeys)
    return [k for k in skeys if k not in tset], [k for k in tkeys if k not in sset]


def written_differences(sconn: Any, src: MappedTable, tconn: Any, dst: MappedTable, lo: Key | None,
                        hi: Key | None, written: Sequence[Key]) -> tuple[list[Key], list[Key]]:
    """Like :func:`key_differences` for a target without range reads, given the (normal) keys a backfill
    chunk just wrote there: source keys it did not write that the target lacks (a live insert whose mirror
    is on its way), and keys it wrote that the source no longer has but the target does (a row deleted
    while the chunk was in flight). Only keys in one list and not the other are read from the target."""
    skeys = src.range_keys(sconn, lo, hi)
    if skeys == list(written):  # the common case, compared in C
        return [], []
    sset, wset = set(skeys), set(written)
    new = [k for k in skeys if k not in wset]
    gone = [k for k in written if k not in sset]
    if not new and not gone:
        return [], []
    present = {dst.row_key(row) for row in dst.read_keys(tconn, new + gone)}
    return [k for k in new if k not in present], [k for k in gone if k in present]


def settle_range(source: Store, target: Store, mapping: TableMapping, sconn: Any, tconn: Any,
                 lo: Key | None, hi: Key | None, written: Sequence[Key] | None = None) -> MirrorResult:
    """Mirror every key whose presence differs between the two sides of ``lo < key <= hi``.

    The mirror reads each such key's source row under lock, so a row deleted while a backfill chunk was
    in flight is deleted from the target, and a live write not yet mirrored is delivered. ``written``:
    the normal keys the chunk wrote, in key order; a target without range reads is then compared by them
    instead of by a scan of its keys (:func:`written_differences`).
    """
    tkind = kind_for(target)
    src = kind_for(source).table(source, mapping, Role.SOURCE)
    dst = tkind.table(target, mapping, Role.TARGET)
    try:
        only_src: list[Key] = []
        only_dst: list[Key] = []
        if written is not None and not tkind.capabilities(target).range_reads:
            only_src, only_dst = written_differences(sconn, src, tconn, dst, lo, hi, written)
        elif not digests_match(sconn, src, tconn, dst, lo, hi):
            only_src, only_dst = key_differences(sconn, src, tconn, dst, lo, hi)
    finally:
        sconn.rollback()  # read-only: end the snapshots either way
        tconn.rollback()
    if not only_src and not only_dst:
        return MirrorResult()
    return mirror_keys(source, target, mapping, only_src + only_dst)
