"""The ``async`` write strategy: the request returns after the authoritative commit; the other store is
written in the background (the seed's "async secondary: eventual, minimal latency, secondary may lag").

A bounded in-process queue of keys, drained by a few worker threads in batches: each batch ends in
:func:`dualwrite.mirror.mirror_keys`, which re-reads the authoritative row under its lock, so batches of one
key may run in any order, twice, or late: the other store ends equal to the authoritative row (rule 1).

"Secondary may lag" is measured, not hoped: the queue depth and the age of its oldest entry are gauges
(``async.depth``, ``async.oldest_seconds``) in every statistics window, exported to Prometheus with the other
adapter gauges, shown by ``status`` and held against ``gates.max_async_lag_seconds`` before any cutover.

Never blocking the request: when the queue is full the keys go straight to the durable repair queue. A
failed batch goes there too, and holds its epoch until the control store has taken it (a key held in memory
while the control store is unreachable is one the fence's drain cannot see). :meth:`AsyncMirror.flush`
(called by ``close()``) waits until the queue is empty. Every queued key holds the epoch it was routed under
in the phase cache (as an open unit of work does), so the barrier of a write fence passes only after the
queue has drained what was routed before it: write cutover drains the queue behind the fence.

After a crash the queue is lost. That tail is found by the verification the gate requires before any
cutover (a full comparison younger than the gate window; see the README's strategy guide for the measured
choice against noting every key durably, which is what ``outbox`` does). So that verification does not
count keys that are only late, each instance records its watermark (:mod:`dualwrite.watermark`) about once a
second: the database time up to which its queue has flushed. A verification waits for every live instance's
watermark to pass its start (:mod:`dualwrite.async_settle`); a killed instance's row goes stale and is not
waited for: its lost tail is what the verification then finds and repairs. Under a write fence the stale row
itself says a tail was lost: the fence's drain levels the gaining store before authority moves
(:mod:`dualwrite.async_tails`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dualwrite import stats as st
from dualwrite import watermark
from dualwrite.adapter._errors import error_class, short_error
from dualwrite.adapter._tables import Key, TableRuntime, Touched
from dualwrite.adapter._timing import record_secondary
from dualwrite.mirror import mirror_keys, normal_key

if TYPE_CHECKING:
    from dualwrite.adapter.phase import Routing, Side
    from dualwrite.adapter.writer import DualWriter

log = logging.getLogger("dualwrite.adapter")

WATERMARK_SECONDS = 1.0
"""How often an instance records its async watermark (a verification waits about this long for a live one)."""


@dataclass
class _Item:
    table: TableRuntime
    key: Key
    a: Side
    b: Side
    epoch: int
    at: float


class AsyncMirror:
    """The background secondary writes of one :class:`~dualwrite.adapter.writer.DualWriter`."""

    def __init__(self, writer: DualWriter, *, capacity: int, workers: int, batch: int,
                 batch_wait: float = 0.0) -> None:
        self.writer = writer
        self.capacity = max(1, capacity)
        self.batch = max(1, batch)
        self.batch_wait = max(0.0, batch_wait)
        self._q: deque[_Item] = deque()
        self._busy: list[float] = []  # enqueue times of items being mirrored now
        self._cond = threading.Condition()
        self._stop = False
        self.overflowed = 0
        self._threads = [threading.Thread(target=self._run, name=f"dualwrite-async-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()
        self._gauge_thread = threading.Thread(target=self._gauges, name="dualwrite-async-gauges", daemon=True)
        self._gauge_thread.start()

    def submit(self, route: Routing, touched: Sequence[Touched]) -> None:
        """Queue the keys of a committed unit of work (never blocks; full -> the durable repair queue)."""
        a, b = route.authoritative, route.mirror_to
        assert b is not None
        now = time.monotonic()
        items = [_Item(t.table, normal_key(t.key), a, b, route.epoch, now) for t in touched]
        with self._cond:
            if not self._stop and len(self._q) + len(self._busy) + len(items) <= self.capacity:
                for _ in items:
                    self.writer.phase.hold(route.epoch)  # open until mirrored: the fence barrier waits
                self._q.extend(items)
                self._cond.notify(len(items))
                return
            self.overflowed += len(items)
        by_table: dict[str, list[Key]] = {}
        for it in items:
            by_table.setdefault(it.table.name, []).append(it.key)
        for name, keys in by_table.items():
            self.writer.enqueue_repair(name, keys, reason="async queue full", authoritative=a.value)
        # not written now: it counts against the secondary success rate the gate reads, like any failure
        n = len(items)
        self.writer.stats.record(counts=[(st.SECONDARY, "attempt", n), (st.SECONDARY, "failure:queue_full", n),
                                         (st.ASYNC, "overflow", n)])

    def depth(self) -> tuple[int, float]:
        """(keys queued or being mirrored, age in seconds of the oldest of them)."""
        now = time.monotonic()
        with self._cond:
            oldest = [it.at for it in (self._q[0],)] if self._q else []
            oldest += self._busy[:1] if self._busy else []
            return len(self._q) + len(self._busy), (now - min(oldest)) if oldest else 0.0

    def _gauges(self) -> None:
        next_mark = 0.0
        while True:
            with self._cond:
                if self._stop and not self._q and not self._busy:
                    break
            self.publish_gauges()
            if time.monotonic() >= next_mark:
                self.record_watermark()
                next_mark = time.monotonic() + WATERMARK_SECONDS
            time.sleep(0.25)

    def record_watermark(self) -> bool:
        """Record in the control store how far this queue has flushed (False when the store refused: the
        heartbeat then ages, and a verification stops waiting for this instance after the liveness window)."""
        w = self.writer
        with self._cond:
            if self._stop:
                return False
            _, age = self.depth()
        try:
            watermark.record(w.control, w.migration, w.instance_id, age)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat only makes verification wait less
            log.debug("migration %s: cannot record the async watermark (%s)", w.migration, error_class(exc))
            return False
        return True

    def publish_gauges(self) -> None:
        """Put the queue depth and the age of its oldest key into the statistics window (every 0.25 s)."""
        n, age = self.depth()
        self.writer.stats.gauge(st.ASYNC_DEPTH, float(n))
        self.writer.stats.gauge(st.ASYNC_AGE, round(age, 3))

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._q:
                if self._stop:
                    return None
                self._cond.wait(0.5)
            if self.batch_wait and len(self._q) < self.batch and not self._stop:
                self._cond.wait(self.batch_wait)  # let a batch gather: fewer round trips, less CPU per key
            out = [self._q.popleft() for _ in range(min(self.batch, len(self._q)))]
            self._busy.extend(it.at for it in out)
            self._busy.sort()
            return out

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            handed: set[int] = set()  # id() of the items whose epoch the repair queue now releases
            try:
                self._mirror(items, handed)
            finally:
                with self._cond:
                    for it in items:
                        self._busy.remove(it.at)
                    self._cond.notify_all()
                for it in items:
                    if id(it) not in handed:
                        self.writer.phase.leave(it.epoch)

    def _mirror(self, items: list[_Item], handed: set[int]) -> None:
        """Mirror a batch, by (table, direction); a group that fails goes to the repair queue, which from then
        on holds the group's epochs (``handed``) until the keys are durable there: a write fence's barrier
        must not pass while a key that failed before the fence is only in this process's memory."""
        w = self.writer
        groups: dict[tuple[str, Any, Any], list[_Item]] = {}
        for it in items:
            groups.setdefault((it.table.name, it.a, it.b), []).append(it)
        for (_name, a, b), group in groups.items():
            rt = group[0].table
            keys = list(dict.fromkeys(it.key for it in group))
            started = time.perf_counter()
            try:
                w.retry_stale(functools.partial(mirror_keys, w.data[a], w.data[b], rt.mapping_from(a), keys), a, b)
                record_secondary(w.stats, b, len(keys), started)
            except Exception as exc:  # noqa: BLE001 - never lost: the durable repair queue takes the keys
                cls = error_class(exc)
                record_secondary(w.stats, b, len(keys), started, cls)
                log.warning("migration %s: async secondary write of %d key(s) of %s to %s failed (%s); queued "
                            "for repair", w.migration, len(keys), rt.name, b.value, cls)
                epochs = [it.epoch for it in group]
                handed.update(id(it) for it in group)
                w.repairs.enqueue(rt.name, keys, reason=f"async {cls}: {short_error(exc)}", authoritative=a.value,
                                  on_durable=functools.partial(self._leave, epochs))

    def _leave(self, epochs: list[int]) -> None:
        for epoch in epochs:
            self.writer.phase.leave(epoch)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued key is mirrored (or handed to the repair queue); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._q or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        self.publish_gauges()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the workers; what could not be flushed in time goes to the repair queue."""
        self.flush(timeout)
        with self._cond:
            self._stop = True
            left = list(self._q)
            self._q.clear()
            self._cond.notify_all()
        by_table: dict[tuple[str, str], list[Key]] = {}
        for it in left:
            by_table.setdefault((it.table.name, it.a.value), []).append(it.key)
            self.writer.phase.leave(it.epoch)
        for (name, a), keys in by_table.items():
            self.writer.enqueue_repair(name, keys, reason="async queue at close", authoritative=a)
        self.writer.stats.count(st.ASYNC, "closed")  # the gate tells a clean exit from a crash by this
        try:  # nothing queued any more: no verification needs to wait for this instance
            watermark.forget(self.writer.control, self.writer.migration, self.writer.instance_id)
        except Exception as exc:  # noqa: BLE001 - the row goes stale instead
            log.debug("migration %s: cannot remove the async watermark (%s)", self.writer.migration, error_class(exc))
        for t in self._threads:
            t.join(timeout=5)
        self._gauge_thread.join(timeout=1)
