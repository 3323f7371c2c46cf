"""Compare the *set of keys* in one key range on both sides, cheaply.

After a backfill chunk commits, a live delete that raced the copy would leave a resurrected row in the
target. Comparing key sets finds it, and anything a live mirror has not delivered yet; the differing keys
then go through the mirror primitive.

Between two PostgreSQL or two MariaDB stores the comparison is a digest first (row count and the XOR
of a 64-bit hash of every key, one aggregate per side), and a key-by-key diff only when they differ.
Across engines the sides would have to agree on a hash, and the portable one (MD5 of the key's text)
costs three times more than reading the keys of a 50k chunk from both sides and comparing the two
ordered lists in C; so cross-engine pairs (and SQLite, which has no hash function) compare key lists.
"""

from __future__ import annotations

from typing import Any

from dualwrite import rows as rowio
from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult, mirror_keys, normal_key
from dualwrite.sqlgen import Key, Side, source_side, target_side
from dualwrite.store import Dialect, Kind, Store

_MASK64 = (1 << 64) - 1
_NEEDS_NORMAL = frozenset({Kind.UUID, Kind.BYTES, Kind.TIMESTAMP, Kind.TIMESTAMPTZ})


def _native_digest_sql(side: Side, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]] | None:
    where, params = side.range_predicate(lo, hi)
    q = side.store.quote
    parts = ", ".join(q(k) for k in side.key)
    if side.store.dialect is Dialect.POSTGRESQL:
        if len(side.key) > 1:
            expr = f"hashtextextended(ROW({parts})::text, 0)"
        elif side.key_kinds[0] is Kind.INT:
            expr = f"hashint8extended({q(side.key[0])}::bigint, 0)"  # no text rendering: twice as fast
        else:
            expr = f"hashtextextended({q(side.key[0])}::text, 0)"
        return f"SELECT count(*), coalesce(bit_xor({expr}), 0) FROM {side.qtable} WHERE {where}", params
    if side.store.dialect is Dialect.MYSQL:
        expr = f"CAST(CONV(LEFT(MD5(CONCAT_WS(0x1f, {parts})), 16), 16, 10) AS UNSIGNED)"
        return f"SELECT COUNT(*), COALESCE(BIT_XOR({expr}), 0) FROM {side.qtable} WHERE {where}", params
    return None


def range_keys(conn: Any, side: Side, lo: Key | None, hi: Key | None) -> list[Key]:
    """Keys in ``lo < key <= hi``, bytewise ordered, comparable across drivers."""
    where, params = side.range_predicate(lo, hi)
    sql = f"SELECT {side.key_list()} FROM {side.qtable} WHERE {where} ORDER BY {side.order_by()}"
    keys = rowio.fetch(conn, sql, params)
    if any(k in _NEEDS_NORMAL for k in side.key_kinds):  # UUID objects vs text, memoryview vs bytes
        return [normal_key(k) for k in keys]
    return keys


def _target_bounds(dst: Side, lo: Key | None, hi: Key | None) -> tuple[Key | None, Key | None]:
    adapt = rowio.adapt_key
    return (None if lo is None else adapt(lo, dst.key_kinds, dst.store.dialect),
            None if hi is None else adapt(hi, dst.key_kinds, dst.store.dialect))


def _digest(conn: Any, stmt: tuple[str, list[Any]]) -> tuple[int, int]:
    (row,) = rowio.fetch(conn, *stmt)
    return int(row[0]), int(row[1]) & _MASK64


def digests_match(sconn: Any, src: Side, tconn: Any, dst: Side, lo: Key | None, hi: Key | None) -> bool | None:
    """True/False when both sides can digest their keys alike, else None (the caller diffs keys)."""
    if src.store.dialect is not dst.store.dialect:
        return None
    s_sql, t_sql = _native_digest_sql(src, lo, hi), _native_digest_sql(dst, *_target_bounds(dst, lo, hi))
    if s_sql is None or t_sql is None:
        return None
    return _digest(sconn, s_sql) == _digest(tconn, t_sql)


def key_differences(sconn: Any, src: Side, tconn: Any, dst: Side, lo: Key | None, hi: Key | None
                    ) -> tuple[list[Key], list[Key]]:
    """Keys in ``lo < key <= hi`` present only in the source, and only in the target."""
    skeys = range_keys(sconn, src, lo, hi)
    tkeys = range_keys(tconn, dst, *_target_bounds(dst, lo, hi))
    if skeys == tkeys:  # the common case, compared in C
        return [], []
    sset, tset = set(skeys), set(tkeys)
    return [k for k in skeys if k not in tset], [k for k in tkeys if k not in sset]


def settle_range(source: Store, target: Store, mapping: TableMapping, sconn: Any, tconn: Any,
                 lo: Key | None, hi: Key | None) -> MirrorResult:
    """Mirror every key whose presence differs between the two sides of ``lo < key <= hi``.

    The mirror reads each such key's source row under lock, so a row deleted while a backfill chunk was
    in flight is deleted from the target, and a live write not yet mirrored is delivered.
    """
    src, dst = source_side(mapping, source), target_side(mapping, target)
    try:
        same = digests_match(sconn, src, tconn, dst, lo, hi)
        only_src: list[Key] = []
        only_dst: list[Key] = []
        if not same:
            only_src, only_dst = key_differences(sconn, src, tconn, dst, lo, hi)
    finally:
        sconn.rollback()  # read-only: end the snapshots either way
        tconn.rollback()
    if not only_src and not only_dst:
        return MirrorResult()
    return mirror_keys(source, target, mapping, only_src + only_dst)
