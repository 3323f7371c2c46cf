"""Keys whose secondary write failed: into the durable repair queue, or held until the control store takes
them, and never lost at exit.

:class:`RepairQueue` queues keys on the control store. While that fails it keeps them in memory and retries
(the writer's background thread calls :meth:`RepairQueue.retry_pending`); at :meth:`RepairQueue.settle`
(``close()``) or at interpreter exit what is still held is spilled to this host's spill file
(:mod:`dualwrite.spill`), re-queued by the next writer of the migration."""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualwrite import control, spill
from dualwrite import stats as st
from dualwrite.adapter._errors import error_class
from dualwrite.adapter._tables import Key
from dualwrite.store import Store

__all__ = ["CloseReport", "RepairQueue"]

log = logging.getLogger("dualwrite.adapter")


@dataclass
class _Pending:
    """Repairs that could not be enqueued (the control store was unreachable): retried later."""

    table: str
    keys: list[Key]
    reason: str
    authoritative: str
    on_durable: Callable[[], None] | None = None
    """called once the keys are durable (queued by a retry, or spilled): see :meth:`RepairQueue.enqueue`"""


@dataclass(frozen=True)
class CloseReport:
    """What :meth:`DualWriter.close` did with the repair keys it still held in memory (counts, no keys)."""

    pending: int = 0
    """keys held in memory at close (their secondary write failed and the control store had not taken them)"""
    enqueued: int = 0
    """of those, queued to the control store's repair queue at close"""
    spilled: int = 0
    """of those, written to the spill file (re-queued by the next writer of the migration)"""
    lost: int = 0
    """of those, neither queued nor spilled (the spill file could not be written): a verification finds them"""
    spill_path: str | None = None


_LIVE: weakref.WeakSet[RepairQueue] = weakref.WeakSet()


@atexit.register
def _spill_at_exit() -> None:
    """An application that exits without ``close()`` must not take its pending repair keys with it."""
    for queue in list(_LIVE):
        with contextlib.suppress(Exception):
            if not queue.settled and queue.pending:
                n, path = queue.spill_pending()
                log.warning("migration %s: exiting without close(): %d repair key(s) spilled to %s (re-queued "
                            "by the next start)", queue.migration, n, path)


class RepairQueue:
    """The repair queue as one writer sees it: durable when the control store answers, held when not."""

    def __init__(self, control_store: Store, migration: str, instance_id: str, stats: st.Stats,
                 spill_dir: Path) -> None:
        self.control = control_store
        self.migration = migration
        self.instance_id = instance_id
        self.stats = stats
        self.spill_dir = spill_dir
        self.settled = False
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        _LIVE.add(self)

    def enqueue(self, table: str, keys: Sequence[Key], *, reason: str, authoritative: str,
                on_durable: Callable[[], None] | None = None) -> bool:
        """Durably queue keys for the repair drain; buffered in memory (and retried) while that fails.
        True when the control store took them now.

        ``on_durable`` is called once the keys are durable: at once, or when a retry queues them, or when
        they are spilled (or at close, when neither could be done). The async queue releases the epoch its
        keys were routed under there, so a write fence's barrier cannot pass while a key the workflow must
        drain before moving authority is only in this process's memory ([T2-5])."""
        try:
            control.enqueue_repair(self.control, self.migration, table, list(keys), reason=reason,
                                   authoritative=authoritative)
            self.stats.count(st.REPAIR, "enqueued", len(keys))
        except Exception as exc:  # noqa: BLE001 - held in memory, retried, spilled at exit
            with self._lock:
                self._pending.append(_Pending(table, list(keys), reason, authoritative, on_durable))
            self.stats.count(st.REPAIR, "buffered", len(keys))
            log.warning("migration %s: cannot queue %d key(s) for repair (%s); kept in memory and retried",
                        self.migration, len(keys), error_class(exc))
            return False
        _released([on_durable])
        return True

    def hold(self, table: str, keys: Sequence[Key], *, reason: str, authoritative: str) -> None:
        """Keep keys in memory for the next :meth:`retry_pending` without trying the control store now (it
        would wait for a lock the caller holds: a SQLite control store whose file has a transaction open)."""
        with self._lock:
            self._pending.append(_Pending(table, list(keys), reason, authoritative, None))
        self.stats.count(st.REPAIR, "buffered", len(keys))

    def retry_pending(self) -> int:
        """Queue the keys held in memory; returns how many the control store took."""
        with self._lock:
            pending, self._pending = self._pending, []
        done = 0
        for i, p in enumerate(pending):
            try:
                control.enqueue_repair(self.control, self.migration, p.table, p.keys, reason=p.reason,
                                       authoritative=p.authoritative)
                done += len(p.keys)
                self.stats.count(st.REPAIR, "enqueued", len(p.keys))
                _released([p.on_durable])
            except Exception:  # noqa: BLE001 - still down: keep the rest for later
                with self._lock:
                    self._pending = pending[i:] + self._pending
                break
        return done

    @property
    def pending(self) -> int:
        """Keys held in memory."""
        with self._lock:
            return sum(len(p.keys) for p in self._pending)

    def requeue_spilled(self) -> int | None:
        """Queue the keys an earlier run of this migration spilled at exit (this host's spill directory);
        returns how many, or None when the control store cannot take them yet (the files stay)."""
        if not spill.spilled_files(self.spill_dir, self.migration):
            return 0

        def enqueue(table: str, keys: list[Key], reason: str, side: str) -> None:
            control.enqueue_repair(self.control, self.migration, table, keys, reason=reason, authoritative=side)
            self.stats.count(st.REPAIR, "enqueued", len(keys))

        try:
            return spill.requeue(self.spill_dir, self.migration, enqueue)
        except Exception as exc:  # noqa: BLE001 - the control store is still down: retried later
            log.warning("migration %s: cannot re-queue spilled repair keys yet (%s); retried later", self.migration,
                        error_class(exc))
            return None

    def spill_pending(self) -> tuple[int, str | None]:
        """Write the keys held in memory to this instance's spill file; returns (keys spilled, path)."""
        with self._lock:
            pending, self._pending = self._pending, []
        entries = [spill.SpillEntry(p.table, tuple(k), p.authoritative, p.reason) for p in pending for k in p.keys]
        if not entries:
            return 0, None
        try:
            path, n = spill.spill(self.spill_dir, self.migration, self.instance_id, entries)
        except OSError:
            with self._lock:
                self._pending = pending + self._pending
            raise
        self.stats.count(st.REPAIR, "spilled", n)
        _released(p.on_durable for p in pending)
        return n, str(path)

    def settle(self) -> CloseReport:
        """At close: queue what is held if the control store is back, else spill it; says which (counts)."""
        self.settled = True
        pending = self.pending
        enqueued = self.retry_pending() if pending else 0
        spilled, path, lost = 0, None, 0
        if self.pending:
            try:
                spilled, path = self.spill_pending()
            except OSError as exc:
                lost = self.pending
                with self._lock:  # closing: nothing more can be done for them, release what they hold
                    held = [p.on_durable for p in self._pending]
                    for p in self._pending:
                        p.on_durable = None
                _released(held)
                log.error("migration %s: %d repair key(s) could not be spilled to %s (%s); a verification will "
                          "find their rows", self.migration, lost, self.spill_dir, type(exc).__name__)
        if pending:
            log.warning("migration %s: closing with %d repair key(s) pending: %d queued for repair, %d spilled to "
                        "%s (re-queued by the next start), %d lost", self.migration, pending, enqueued, spilled,
                        path or "-", lost)
        return CloseReport(pending=pending, enqueued=enqueued, spilled=spilled, lost=lost, spill_path=path)


def _released(callbacks: Iterable[Callable[[], None] | None]) -> None:
    """Call the ``on_durable`` callbacks of keys that are durable now (a failing one must not stop the rest)."""
    for fn in callbacks:
        if fn is not None:
            try:
                fn()
            except Exception:  # a callback must not break the queue (logged with its traceback)
                log.exception("repair queue: releasing held keys failed")
