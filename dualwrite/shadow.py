"""Shadow reads: serve the authoritative answer, compare it with the other store's, report every drift.

In SHADOW_READ and CUTOVER_READS a sampled read also reads the other store, concurrently and off the
request path: the request gets the authoritative result as soon as it has it, never waits for the other
store, and never sees an error from it. The other store is read for small batches of sampled keys at once
(one ``IN (...)`` query per table per few milliseconds, with a timeout), so that comparing every read costs
a fraction of the reads themselves. The two rows are compared field by field in *target* space (the old
row is mapped the way the migration maps it), each value put in its canonical form first
(:mod:`dualwrite.canonical`: ``1`` vs ``True``, ``Decimal('1.5')`` vs ``'1.50'``, naive vs aware UTC), with
per-field ignore rules and custom normalisers.

Every mismatch is logged as a structlog event ``shadow_mismatch`` with migration, table, field, its class
and short hashes of the entity id and of the old and new values (keys and values are data: they are
logged in clear only when the operator asks, ``AdapterOptions.shadow_log_values`` or
``DUALWRITE_SHADOW_LOG_VALUES=1``); the class is (missing: only the old store has the row; extra: only the new one has
it; field_different). A mismatch on a key that was just written (here, or on another instance: the row
versions differ, or the row exists on one side only) can be a read-your-write race between the two
stores rather than drift, so it is read again a moment later and counted only if it persists.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import heapq
import itertools
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog

from dualwrite.canonical import canonical_value, encode_row
from dualwrite.mapping import SourceKind, TableMapping
from dualwrite.stats import SHADOW, Stats
from dualwrite.stores import Role, kind_for, normal_key

log = logging.getLogger("dualwrite.shadow")
slog = structlog.get_logger("dualwrite.shadow")

Key = tuple[Any, ...]
Row = Mapping[str, Any]
#: (source table, side 'old' | 'new', key) -> the row as a dict of that store's column names, or None
RowReader = Callable[[str, str, Key], dict[str, Any] | None]
#: (source table, side, keys) -> {key: row} for the keys found (a key missing from the dict: no such row)
RowsReader = Callable[[str, str, list[Key]], dict[Key, dict[str, Any] | None]]

MISSING, EXTRA, FIELD = "missing", "extra", "field_different"


def kind_rows_reader(stores: Mapping[str, Any], mappings: Mapping[str, TableMapping]) -> RowsReader:
    """A :data:`RowsReader` through the stores' kinds (:mod:`dualwrite.stores`), for any kind of store.

    ``stores`` maps a side ('old', 'new') to its store, ``mappings`` a source table to its mapping: 'old'
    reads the mapping's source table, 'new' its target table, each row as that store keeps it.
    """
    def read(table: str, side: str, keys: list[Key]) -> dict[Key, dict[str, Any] | None]:
        store, mapping = stores[side], mappings[table]
        kind = kind_for(store)
        rows = kind.table(store, mapping, Role.SOURCE if side == "old" else Role.TARGET)
        wanted = {normal_key(k): k for k in keys}
        with kind.connect(store) as conn:
            found = rows.stored_rows(conn, list(wanted))
        return {wanted[k]: row for k, row in found.items() if k in wanted}

    return read


@dataclass(frozen=True)
class Mismatch:
    kind: str
    table: str
    entity_id: str
    field: str | None
    old_value: Any
    new_value: Any


@dataclass(frozen=True)
class ShadowOptions:
    sample_ratio: float = 1.0
    timeout: float = 0.5
    """Seconds the other store may take; a slower read is counted as 'timeout' and not compared."""
    recent_write_seconds: float = 2.0
    recheck_delay: float = 0.25
    recheck_attempts: int = 2
    batch_window: float = 0.02
    """Sampled keys are read from the other store together, at most this long after the first of a batch."""
    batch_max: int = 200
    max_in_flight: int = 5000
    log_values: bool = False
    """Log mismatching keys and values in clear (the operator asked); else only their hashes."""
    """Above this many pending comparisons new samples are skipped (counted), protecting the application."""
    ignore: Mapping[str, frozenset[str]] | None = None
    """table -> field names (source or target names) never compared."""
    normalizers: Mapping[str, Mapping[str, Callable[[Any], Any]]] | None = None
    """table -> field -> function applied to both values before comparing (instead of the canonical form)."""


def display(value: Any) -> Any:
    """A value as it appears in a log event (JSON-friendly, exact)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def value_hash(value: Any) -> str | None:
    """A short, stable hash of a value (None stays None): equal values give equal hashes on every instance,
    so a drift can be followed across log lines without the value (a key, an e-mail) being in them."""
    if value is None:
        return None
    return hashlib.sha256(encode_row((value,))).hexdigest()[:12]


def entity_id(key: Key) -> str:
    return "/".join(str(display(v)) for v in key)


class TableComparator:
    """Compares an old row (source column names) with a new row (target column names) in target space."""

    def __init__(self, mapping: TableMapping, *, ignore: frozenset[str] = frozenset(),
                 normalizers: Mapping[str, Callable[[Any], Any]] | None = None) -> None:
        self.mapping = mapping
        self.version = mapping.version
        norms = dict(normalizers or {})
        self.fields: list[tuple[str, Any, Callable[[Any], Any]]] = []
        for plan in mapping.columns:
            if plan.target in ignore or (plan.source is not None and plan.source in ignore):
                continue
            if plan.kind is SourceKind.EXPR:
                continue  # SQL on the source: not computable from a row in Python
            col = mapping.target_info.columns[plan.target]
            custom = norms.get(plan.target) or (norms.get(plan.source) if plan.source else None)
            if custom is not None:
                canon = custom
            else:
                def canon(v: Any, _k: Any = col.kind, _s: Any = col.scale) -> Any:
                    return canonical_value(v, _k, _s)
            self.fields.append((plan.target, plan, canon))

    def _old_value(self, plan: Any, old: Row) -> tuple[bool, Any]:
        if plan.kind is SourceKind.COLUMN:
            return (plan.source in old), old.get(plan.source)
        if plan.kind is SourceKind.DEFAULT:
            return True, plan.value
        if plan.kind is SourceKind.TRANSFORM and plan.transform is not None:
            if plan.source is not None:
                return (plan.source in old), plan.transform(old[plan.source]) if plan.source in old else None
            return True, plan.transform(dict(old))
        return False, None

    def compare(self, table: str, key: Key, old: Row | None, new: Row | None) -> list[Mismatch]:
        eid = entity_id(key)
        if old is None and new is None:
            return []
        if new is None:
            return [Mismatch(MISSING, table, eid, None, "present", None)]
        if old is None:
            return [Mismatch(EXTRA, table, eid, None, None, "present")]
        out: list[Mismatch] = []
        for target, plan, canon in self.fields:
            if target not in new:
                continue  # not loaded on this side (a deferred ORM column)
            try:
                known, old_v = self._old_value(plan, old)
            except Exception:  # noqa: BLE001, S112 - a transform that fails on this row: compare what we can
                continue
            if not known:
                continue
            new_v = new[target]
            a = None if old_v is None else canon(old_v)
            b = None if new_v is None else canon(new_v)
            if a != b:
                out.append(Mismatch(FIELD, table, eid, target, display(old_v), display(new_v)))
        return out

    def versions(self, old: Row | None, new: Row | None) -> tuple[Any, Any] | None:
        if self.version is None or old is None or new is None:
            return None
        return old.get(self.version[0]), new.get(self.version[1])


class RecentWrites:
    """Keys written by this process in the last moments (bounded), for the read-your-write re-check."""

    def __init__(self, seconds: float = 2.0, max_size: int = 100_000) -> None:
        self.seconds = seconds
        self.max_size = max_size
        self._data: OrderedDict[tuple[str, Key], float] = OrderedDict()
        self._tables: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, table: str, key: Key) -> None:
        now = time.monotonic()
        k = (table, tuple(str(v) for v in key))
        self._tables[table] = now
        with self._lock:
            self._data[k] = now
            self._data.move_to_end(k)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def recent(self, table: str, key: Key, seconds: float | None = None) -> bool:
        k = (table, tuple(str(v) for v in key))
        at = self._data.get(k)
        return at is not None and time.monotonic() - at < (self.seconds if seconds is None else seconds)

    def table_recent(self, table: str, seconds: float) -> bool:
        """Did this process write ``table`` in the last ``seconds``?"""
        at = self._tables.get(table)
        return at is not None and time.monotonic() - at < seconds


class Scheduler:
    """Runs callables after a delay on one daemon thread (re-checks, delayed re-mirrors). Cheap to keep."""

    def __init__(self, name: str = "dualwrite-scheduler") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("scheduled job failed")

    def stop(self, run_pending: bool = False) -> None:
        with self._cond:
            jobs = [fn for _, _, fn in sorted(self._heap)] if run_pending else []
            self._heap.clear()
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)
        for fn in jobs:
            try:
                fn()
            except Exception:
                log.exception("scheduled job failed")


class Handoff:
    """The primary row, handed from the request thread to the comparison running beside it."""

    __slots__ = ("_event", "row", "ok")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.row: dict[str, Any] | None = None
        self.ok = False

    def set(self, row: dict[str, Any] | None) -> None:
        self.row, self.ok = row, True
        self._event.set()

    def cancel(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout) and self.ok


class ShadowReader:
    """Runs sampled comparisons off the request path and reports the verdicts (stats, structlog events).

    A sampled read registers its key at once (the request thread does no more than that) and hands its own
    row over when it has it. The other store is read for a whole *batch* of sampled keys at a time: one
    ``WHERE key IN (...)`` per table every ``batch_window`` seconds (or ``batch_max`` keys) instead of one
    query per read, so comparing every read costs the other store and this process a fraction of what the
    reads themselves cost. A batch that takes longer than ``timeout`` counts its reads as 'timeout'.
    """

    def __init__(self, migration: str, comparators: Mapping[str, TableComparator], read_row: RowReader,
                 stats: Stats, executor: Executor, scheduler: Scheduler, recent: RecentWrites,
                 options: ShadowOptions | None = None, read_rows: RowsReader | None = None) -> None:
        self.migration = migration
        self.comparators = comparators
        self.read_row = read_row
        self.read_rows = read_rows or (lambda t, side, keys: {k: read_row(t, side, k) for k in keys})
        self.stats = stats
        self.executor = executor
        self.scheduler = scheduler
        self.recent = recent
        self.options = options or ShadowOptions()
        self.sample_override: float | None = None
        self.mismatches: deque[Mismatch] = deque(maxlen=1000)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._batches: dict[tuple[str, str], list[tuple[Key, str, Handoff]]] = {}

    # -- sampling and submission ----------------------------------------------------------------------------

    def sampled(self) -> bool:
        ratio = self.sample_override if self.sample_override is not None else self.options.sample_ratio
        return ratio >= 1.0 or (ratio > 0.0 and random.random() < ratio)  # noqa: S311 - sampling, not crypto

    def _enter(self) -> bool:
        with self._lock:
            if self._in_flight >= self.options.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def _leave(self, n: int = 1) -> None:
        with self._lock:
            self._in_flight -= n

    def start(self, table: str, key: Key, primary_side: str) -> Handoff | None:
        """Register a shadow read of ``key``; the caller hands over its own row with ``handoff.set``."""
        handoff = Handoff()
        other_side = "new" if primary_side == "old" else "old"
        batch_key = (table, other_side)
        with self._lock:
            if self._in_flight >= self.options.max_in_flight:
                full = True
            else:
                full = False
                self._in_flight += 1
                batch = self._batches.get(batch_key)
                first = batch is None
                if first:
                    batch = self._batches[batch_key] = []
                assert batch is not None
                batch.append((key, primary_side, handoff))
                flush_now = len(batch) >= self.options.batch_max
                if flush_now:
                    del self._batches[batch_key]
        if full:
            self.stats.count(SHADOW, "skipped")
            return None
        if flush_now:
            assert batch is not None
            self._submit_batch(table, other_side, batch)
        elif first:
            self.scheduler.call_later(self.options.batch_window, lambda: self._flush(batch_key))
        return handoff

    def submit_loaded(self, table: str, key: Key, primary_side: str, row: dict[str, Any]) -> None:
        """Compare a row already read (an ORM load) with the other store's."""
        handoff = self.start(table, key, primary_side)
        if handoff is not None:
            handoff.set(row)

    def _flush(self, batch_key: tuple[str, str]) -> None:
        with self._lock:
            batch = self._batches.pop(batch_key, None)
        if batch:
            self._submit_batch(batch_key[0], batch_key[1], batch)

    def _submit_batch(self, table: str, other_side: str, batch: list[tuple[Key, str, Handoff]]) -> None:
        try:
            self.executor.submit(self._run_batch, table, other_side, batch)
        except RuntimeError:  # the executor is shut down
            self._leave(len(batch))

    def _run_batch(self, table: str, other_side: str, batch: list[tuple[Key, str, Handoff]]) -> None:
        try:
            started = time.perf_counter()
            keys = list(dict.fromkeys(k for k, _, _ in batch))
            try:
                others = self.read_rows(table, other_side, keys)
            except Exception as exc:  # noqa: BLE001 - the other store failing never reaches the request
                self.stats.count(SHADOW, "error", len(batch))
                log.debug("shadow read of %s failed: %s", table, type(exc).__name__)
                return
            if time.perf_counter() - started > self.options.timeout:
                self.stats.count(SHADOW, "timeout", len(batch))
                return
            for key, primary_side, handoff in batch:
                if not handoff.wait(5.0):  # the primary read failed or was abandoned
                    continue
                other = others.get(key)
                primary = handoff.row
                old, new = (primary, other) if primary_side == "old" else (other, primary)
                self._judge(table, key, old, new, attempt=0)
        finally:
            self._leave(len(batch))

    # -- verdicts --------------------------------------------------------------------------------------------

    def compare(self, table: str, key: Key, old: Row | None, new: Row | None) -> list[Mismatch]:
        return self.comparators[table].compare(table, key, old, new)

    def _should_recheck(self, table: str, key: Key, old: Row | None, new: Row | None,
                        diffs: list[Mismatch]) -> bool:
        if self.recent.recent(table, key):
            return True
        if any(d.kind in (MISSING, EXTRA) for d in diffs):
            return True  # a row just inserted or deleted elsewhere: one more look costs little
        versions = self.comparators[table].versions(old, new)
        return versions is not None and versions[0] != versions[1]

    def _judge(self, table: str, key: Key, old: Row | None, new: Row | None, attempt: int) -> None:
        diffs = self.compare(table, key, old, new)
        if not diffs:
            self.stats.record(counts=[(SHADOW, "match", 1)] + ([(SHADOW, "rechecked", 1)] if attempt else []))
            return
        if (attempt < self.options.recheck_attempts and self._should_recheck(table, key, old, new, diffs)
                and self._enter()):
            self.scheduler.call_later(self.options.recheck_delay * (attempt + 1),
                                      lambda: self._submit_recheck(table, key, attempt + 1))
            return
        self._report(diffs)

    def _submit_recheck(self, table: str, key: Key, attempt: int) -> None:
        try:
            self.executor.submit(self._recheck, table, key, attempt)
        except RuntimeError:
            self._leave()

    def _recheck(self, table: str, key: Key, attempt: int) -> None:
        try:
            try:
                old = self.read_row(table, "old", key)
                new = self.read_row(table, "new", key)
            except Exception:  # noqa: BLE001
                self.stats.count(SHADOW, "error")
                return
            self._judge(table, key, old, new, attempt)
        finally:
            self._leave()

    def _report(self, diffs: list[Mismatch]) -> None:
        kind = MISSING if any(d.kind == MISSING for d in diffs) else EXTRA if any(
            d.kind == EXTRA for d in diffs) else FIELD
        self.stats.count(SHADOW, kind)
        for d in diffs:
            self.mismatches.append(d)
            if self.options.log_values:
                slog.warning("shadow_mismatch", migration=self.migration, table=d.table, entity_id=d.entity_id,
                             field=d.field, old_value=d.old_value, new_value=d.new_value, kind=d.kind)
            else:
                slog.warning("shadow_mismatch", migration=self.migration, table=d.table,
                             entity_hash=value_hash(d.entity_id), field=d.field, old_hash=value_hash(d.old_value),
                             new_hash=value_hash(d.new_value), kind=d.kind)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight
