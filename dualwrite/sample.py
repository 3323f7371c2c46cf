"""Worker shadow samples: the shadow-read evidence of a migration whose application has no adapter.

With ``triggers`` the application writes straight to the old store and reads from it; nothing in it ever
reads the new store, so the adapter's shadow comparisons (and their counts in ``dualwrite_stats``) never
exist and a gate waiting for ``min_shadow_samples`` would wait forever. The worker produces the evidence
itself: it picks keys of each table, reads them from both stores and compares the canonical rows, the same
comparison a verification makes (:func:`dualwrite.verify.verify_keys`, through :mod:`dualwrite.canonical`).

Two kinds of keys are sampled, because they catch different faults:

- **recently changed** keys: what the capture holds and the relay has not mirrored yet: the newest entries
  of the change log the capture triggers write (``triggers``), the keys waiting in the database's own log
  (``cdc``: a replication slot, the binlog, through the method's store side). The sampler waits (boundedly)
  until the relay has mirrored them, then compares: a mismatch there is a mirror that went wrong (a
  mapping, a type, a lost write), the thing a shadow read in the application would have caught;
- **random** keys: short runs of consecutive keys from random points of the key space (random key
  ranges), so rows nobody writes now are covered too (a backfill or repair that went wrong).

A key whose row differs but which waits in the capture again (written once more meanwhile) is *in flight*:
re-checked a moment later, and counted as neither match nor mismatch if it is still on its way. The counts
are recorded under their own name (:data:`dualwrite.stats.SHADOW_SAMPLE`), so a gate's evidence says it
came from a worker sample and not from application reads. Only counts leave this module, never keys or
values (a mismatch is logged with its table and class, not its key).

No Temporal imports: the activity in ``activities/sample.py`` is a thin wrapper.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dualwrite import rows as rowio
from dualwrite.capture.store_side import RelayStores, StoreSide
from dualwrite.keys import Key, decode_key
from dualwrite.mapping import TableMapping
from dualwrite.mirror import normal_key
from dualwrite.outbox import CHANGELOG
from dualwrite.sqlgen import Side, source_side
from dualwrite.store import Kind, Store

log = logging.getLogger("dualwrite.sample")

#: consecutive keys read from each random point of the key space
RUN_LENGTH = 10
#: how often a sampled-but-differing key is looked at again before it counts
RECHECKS = 2
RECHECK_DELAY = 0.3


@dataclass
class SampleResult:
    """What one sample of one table (or the sum over tables) found: counts only."""

    compared: int = 0
    match: int = 0
    mismatch: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    recent: int = 0
    random: int = 0
    tables: int = 0
    whole_tables: int = 0
    """tables whose every row was compared (smaller than the sample): their sample cannot grow"""
    errors: list[str] = field(default_factory=list)

    def __iadd__(self, other: SampleResult) -> SampleResult:
        self.compared += other.compared
        self.match += other.match
        for k, v in other.mismatch.items():
            self.mismatch[k] = self.mismatch.get(k, 0) + v
        self.in_flight += other.in_flight
        self.recent += other.recent
        self.random += other.random
        self.tables += other.tables
        self.whole_tables += other.whole_tables
        for e in other.errors:
            if e not in self.errors and len(self.errors) < 5:
                self.errors.append(e)
        return self

    @property
    def mismatches(self) -> int:
        return sum(self.mismatch.values())

    @property
    def exhaustive(self) -> bool:
        """Every row of every table sampled was compared."""
        return self.tables > 0 and self.whole_tables == self.tables


# ---------------------------------------------------------------------------------------------------------
# recently changed keys: the newest change-log entries, once the relay has mirrored them


def recent_log_keys(store: Store, migration: str, table: str, kinds: Sequence[Kind], limit: int, *,
                    log_table: str = CHANGELOG) -> tuple[list[int], list[Key]]:
    """(entry ids, keys) of the newest ``limit`` entries logged for ``table`` (no locks taken)."""
    if limit <= 0 or log_table not in store.table_names():
        return [], []
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, key_json FROM {log_table} WHERE migration = {p} AND table_name = {p} "
                    f"ORDER BY id DESC LIMIT {int(limit)}", (migration, table))
        rows = cur.fetchall()
        cur.close()
        conn.rollback()
    ids, keys = [], []
    for entry_id, wire in rows:
        key = decode_key(list(json.loads(wire)), kinds)
        if key is not None:
            ids.append(int(entry_id))
            keys.append(key)
    return ids, list(dict.fromkeys(normal_key(k) for k in keys))


def entries_left(store: Store, ids: Sequence[int], *, log_table: str = CHANGELOG) -> int:
    """How many of these key-log entries are still waiting (not yet mirrored by the relay)."""
    if not ids:
        return 0
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {log_table} WHERE id IN ({', '.join([p] * len(ids))})", tuple(ids))
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n)


def wait_mirrored(store: Store, ids: Sequence[int], seconds: float, *, log_table: str = CHANGELOG,
                  should_stop: Callable[[], bool] | None = None) -> int:
    """Wait up to ``seconds`` until the relay took these entries; returns how many are left."""
    deadline = time.monotonic() + seconds
    while True:
        left = entries_left(store, ids, log_table=log_table)
        if not left or time.monotonic() >= deadline or (should_stop is not None and should_stop()):
            return left
        time.sleep(0.1)


class RecentChanges(Protocol):
    """Where a capture method's recently changed keys come from (chosen by its facts, see
    :func:`recent_changes_for`)."""

    def recent(self, spec_table: str, mapping: TableMapping, limit: int, wait_seconds: float,
               should_stop: Callable[[], bool] | None) -> list[Key]:
        """Up to ``limit`` keys of ``mapping``'s source table changed on the old store and not yet mirrored
        when asked, after waiting up to ``wait_seconds`` for the relay to mirror them."""
        ...


class KeyLogChanges:
    """A key log on the old store (``triggers``): its newest entries, waited for by their ids."""

    def __init__(self, store: Store, migration: str, log_table: str = CHANGELOG) -> None:
        self.store, self.migration, self.log_table = store, migration, log_table

    def recent(self, spec_table: str, mapping: TableMapping, limit: int, wait_seconds: float,
               should_stop: Callable[[], bool] | None) -> list[Key]:
        ids, keys = recent_log_keys(self.store, self.migration, mapping.source_table, mapping.key_kinds, limit,
                                    log_table=self.log_table)
        if ids:
            wait_mirrored(self.store, ids, wait_seconds, log_table=self.log_table, should_stop=should_stop)
        return keys


class CaptureChanges:
    """The database's own log (``cdc``), read through the method's store side: the keys it holds for the
    table on the old store that the relay has not applied yet, waited for until capture reaches the end of
    the log as it was when they were read. Nothing in the log is moved."""

    def __init__(self, rs: RelayStores, side: StoreSide) -> None:
        self.rs, self.side = rs, side

    def recent(self, spec_table: str, mapping: TableMapping, limit: int, wait_seconds: float,
               should_stop: Callable[[], bool] | None) -> list[Key]:
        if limit <= 0:
            return []
        points = self.side.catch_up_points(self.rs, ("old",))
        pending = self.side.pending_keys(self.rs.old, self.rs.control, self.rs.spec.name, spec_table, mapping)
        keys = sorted(pending, key=repr)[:limit]  # a log holds no order of its keys worth keeping here
        deadline = time.monotonic() + wait_seconds
        while keys and points and self.side.behind(self.rs, points)[0]:
            if time.monotonic() >= deadline or (should_stop is not None and should_stop()):
                break
            time.sleep(0.1)
        return keys


def recent_changes_for(rs: RelayStores, side: StoreSide) -> RecentChanges:
    """The recently changed keys of a migration's capture method, chosen by its facts: its key log where it has
    one, otherwise what its store side holds unapplied (the database's own log)."""
    key_log = rs.method.key_log
    if key_log is not None:
        return KeyLogChanges(rs.old, rs.spec.name, key_log)
    return CaptureChanges(rs, side)


# ---------------------------------------------------------------------------------------------------------
# random keys: short runs from random points of the key space


def _bounds(conn: Any, side: Side) -> tuple[Key, Key] | None:
    base = f"SELECT {side.key_list()} FROM {side.qtable} ORDER BY "
    cur = conn.cursor()
    cur.execute(base + f"{side.order_by()} LIMIT 1", ())
    lo = cur.fetchone()
    cur.execute(base + f"{side.order_by(desc=True)} LIMIT 1", ())
    hi = cur.fetchone()
    cur.close()
    if lo is None or hi is None:
        return None
    return tuple(lo), tuple(hi)


def _between_text(lo: str, hi: str, rng: random.Random) -> str:
    """A string that sorts (bytewise) between ``lo`` and ``hi``: their common prefix and one random
    character in between at the first position where they differ."""
    i = 0
    while i < len(lo) and i < len(hi) and lo[i] == hi[i]:
        i += 1
    a = max(1, ord(lo[i])) if i < len(lo) else 0x20  # never NUL: PostgreSQL text cannot hold it
    b = ord(hi[i]) if i < len(hi) else 0x7e
    if b <= a:
        return lo
    c = rng.randint(a, min(b, 0x10FFFF))
    if 0xD800 <= c <= 0xDFFF:
        c = a  # a lone surrogate cannot be encoded to send
    return hi[:i] + chr(c)


def random_probe(kind: Kind, lo: Any, hi: Any, rng: random.Random) -> Any | None:
    """A random value of the key's first column between ``lo`` and ``hi`` (None: no way to pick one)."""
    try:
        if kind is Kind.INT:
            a, b = int(lo), int(hi)
            return rng.randint(min(a, b), max(a, b))
        if kind in (Kind.DECIMAL, Kind.FLOAT):
            a2, b2 = float(lo), float(hi)
            value = rng.uniform(min(a2, b2), max(a2, b2))
            return decimal.Decimal(repr(value)) if kind is Kind.DECIMAL else value
        if kind is Kind.UUID:
            return uuid.UUID(int=rng.getrandbits(128))
        if kind is Kind.TEXT:
            return _between_text(str(lo), str(hi), rng)
        if kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ) and isinstance(lo, dt.date):
            span = (hi - lo).total_seconds() if isinstance(lo, dt.datetime) else (hi - lo).days * 86400.0
            offset = dt.timedelta(seconds=rng.uniform(0, max(0.0, span)))
            return lo + offset if isinstance(lo, dt.datetime) else lo + dt.timedelta(days=offset.days)
    except (TypeError, ValueError, ArithmeticError):
        return None
    return None


def random_keys(store: Store, mapping: TableMapping, n: int, rng: random.Random, *, run: int = RUN_LENGTH
                ) -> list[Key]:
    """About ``n`` keys of the source table: runs of ``run`` consecutive keys from random points.

    A probe is a random value of the first key column between the smallest and the largest key. Keys are
    rarely spread evenly (ids that jump by millions, a common prefix), so a probe that lands in a region
    already sampled walks on from the end of it instead: the sample always reaches ``n`` keys when the
    table has them, every query is a short index range scan, and no query counts or skips rows."""
    if n <= 0:
        return []
    side = source_side(mapping, store)
    kind = side.key_kinds[0]
    ph = store.paramstyle
    keys = side.key_list()
    found: dict[Key, None] = {}
    with store.connect() as conn:
        bounds = _bounds(conn, side)
        if bounds is None:
            conn.rollback()
            return []
        lo, hi = bounds
        cur = conn.cursor()
        tail: Key | None = None
        for _ in range(4 * max(1, -(-n // run)) + 4):
            if len(found) >= n:
                break
            probe = random_probe(kind, lo[0], hi[0], rng)
            if probe is not None:
                value = rowio.adapt_key((probe,), side.key_kinds[:1], store.dialect)[0]
                cur.execute(f"SELECT {keys} FROM {side.qtable} WHERE {side.key_expr(0)} >= {ph} "
                            f"ORDER BY {side.order_by()} LIMIT {int(run)}", (value,))
                rows = [normal_key(tuple(r)) for r in cur.fetchall()]
                fresh = [k for k in rows if k not in found]
                if rows and len(fresh) == len(rows):
                    found.update(dict.fromkeys(fresh))
                    continue
                found.update(dict.fromkeys(fresh))
            # walk on after the keys sampled last (from the start of the table once at its end)
            where, params = side.range_predicate(
                rowio.adapt_key(tail, side.key_kinds, store.dialect) if tail is not None else None, None)
            cur.execute(f"SELECT {keys} FROM {side.qtable} WHERE {where} ORDER BY {side.order_by()} "
                        f"LIMIT {int(run)}", tuple(params))
            rows = [normal_key(tuple(r)) for r in cur.fetchall()]
            if not rows:
                if tail is None:
                    break  # an empty table
                tail = None
                continue
            tail = rows[-1]
            found.update(dict.fromkeys(k for k in rows if k not in found))
        cur.close()
        conn.rollback()
    return list(found)[:n]


# ---------------------------------------------------------------------------------------------------------
# comparing


def _kind_name(kind: Any) -> str:
    value = str(getattr(kind, "value", kind))
    return "field_different" if value.startswith("field") else value


def compare_keys(old: Store, new: Store, mapping: TableMapping, keys: Sequence[Key],
                 pending: Callable[[], set[Key]], *, should_stop: Callable[[], bool] | None = None
                 ) -> SampleResult:
    """Compare the rows of ``keys`` on both stores (canonical values, in target space) and classify them.

    ``pending()``: the keys waiting in a key log right now; a differing key among them is in flight. A
    differing key is read again a moment later (up to :data:`RECHECKS` times) before it counts."""
    from dualwrite.verify import verify_keys  # noqa: PLC0415 - the verification stack is heavy

    out = SampleResult()
    unique = list(dict.fromkeys(normal_key(tuple(k)) for k in keys))
    if not unique:
        return out
    report = verify_keys(old, new, mapping, unique, allow_empty=True, max_differences=len(unique))
    differing = {normal_key(tuple(d.key)): d for d in report.differences}
    for attempt in range(RECHECKS):
        if not differing or (should_stop is not None and should_stop()):
            break
        time.sleep(RECHECK_DELAY * (attempt + 1))
        again = verify_keys(old, new, mapping, list(differing), allow_empty=True, max_differences=len(differing))
        differing = {normal_key(tuple(d.key)): d for d in again.differences}
    waiting = pending() if differing else set()
    out.compared = len(unique)
    for key, diff in differing.items():
        if key in waiting:
            out.in_flight += 1
            continue
        name = _kind_name(diff.kind)
        out.mismatch[name] = out.mismatch.get(name, 0) + 1
    out.match = out.compared - out.mismatches - out.in_flight
    if out.mismatches:
        log.warning("worker shadow sample of %s: %d of %d rows differ (%s)", mapping.source_table, out.mismatches,
                    out.compared, ", ".join(f"{k} {v}" for k, v in sorted(out.mismatch.items())))
    return out


def sample_table(old: Store, new: Store, mapping: TableMapping, migration: str, *, recent: int, random_n: int,
                 pending: Callable[[], set[Key]], wait_seconds: float = 10.0, rng: random.Random | None = None,
                 log_table: str = CHANGELOG, should_stop: Callable[[], bool] | None = None,
                 changes: RecentChanges | None = None, spec_table: str | None = None) -> SampleResult:
    """One sample of one table: up to ``recent`` recently changed keys (once mirrored) and about
    ``random_n`` random ones, compared on both stores.

    ``changes``: where the recently changed keys come from (default: the key log ``log_table`` on the old
    store); ``spec_table``: the table as the spec names it (default: the mapping's source table)."""
    rng = rng or random.Random()  # noqa: S311 - sampling, not crypto
    changes = changes or KeyLogChanges(old, migration, log_table)
    changed = changes.recent(spec_table or mapping.source_table, mapping, recent, wait_seconds, should_stop)
    # random keys fill the sample up: under a fast relay the log holds only the last moment's keys
    picked = random_keys(old, mapping, random_n + recent - len(changed), rng)
    keys = list(dict.fromkeys([*changed, *picked]))
    out = compare_keys(old, new, mapping, keys, pending, should_stop=should_stop)
    out.recent, out.random = len(changed), len(keys) - len(changed)
    out.tables = 1
    if len(picked) < random_n + recent - len(changed):
        out.whole_tables = int(_rows_at_most(old, mapping, len(picked)))
    return out


def _rows_at_most(store: Store, mapping: TableMapping, n: int) -> bool:
    """Does the source table hold at most ``n`` rows? (Counts no further than ``n + 1``.)"""
    side = source_side(mapping, store)
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM (SELECT 1 AS one FROM {side.qtable} LIMIT {int(n) + 1}) dw_n", ())
        (count,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(count) <= n
