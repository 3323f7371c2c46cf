"""The secondary write of methods that mirror right after the authoritative commit, inside the call
(``mirrors_after_commit``: sync).

The adapter already holds the committed row image (``RETURNING``, or the ORM's flushed state), so it writes
that image with a version-guarded upsert, one round trip (:mod:`._fast_path`); on any doubt (no version
column, no image, a delete, a slow commit, an image the guard refused) it falls back to
:func:`dualwrite.mirror.mirror_keys`, which re-reads the source under lock. A failure or timeout never fails
the request: it is counted by error class and the keys go to the durable repair queue."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from dualwrite import stats as st
from dualwrite.adapter._errors import error_class, short_error
from dualwrite.adapter._fast_path import FastPath, write_images
from dualwrite.adapter._options import AdapterOptions
from dualwrite.adapter._repairs import RepairQueue
from dualwrite.adapter._stores import retry_stale
from dualwrite.adapter._tables import Key, TableRuntime, Touched
from dualwrite.adapter._timing import record_secondary
from dualwrite.adapter.phase import PhaseCache, Routing, Side
from dualwrite.mirror import mirror_keys, normal_key
from dualwrite.shadow import Scheduler
from dualwrite.store import Store

__all__ = ["InlineMirror"]

log = logging.getLogger("dualwrite.adapter")


class InlineMirror:
    """Makes the other store follow keys just committed, before the application's call returns."""

    def __init__(self, migration: str, data: Mapping[Side, Store], options: AdapterOptions, stats: st.Stats,
                 repairs: RepairQueue, scheduler: Scheduler, executor: Executor, phase: PhaseCache) -> None:
        self.migration = migration
        self.phase = phase
        self.data = data
        self.options = options
        self.stats = stats
        self.repairs = repairs
        self.scheduler = scheduler
        self.executor = executor

    def mirror(self, route: Routing, touched: Sequence[Touched], committed_at: float) -> None:
        """Mirror the keys of ``touched`` (committed at ``committed_at``, ``perf_counter``); never raises."""
        a, b = route.authoritative, route.mirror_to
        assert b is not None
        by_table: dict[str, list[Touched]] = defaultdict(list)
        for t in touched:
            by_table[t.table.name].append(t)
        for items in by_table.values():
            self._mirror_table(items[0].table, items, a, b, committed_at, route.epoch)

    def _mirror_table(self, rt: TableRuntime, items: list[Touched], a: Side, b: Side, committed_at: float,
                      epoch: int) -> None:
        keys = list(dict.fromkeys(normal_key(t.key) for t in items))
        started = time.perf_counter()
        try:
            fast = rt.fast[a] if self.options.fast_path else None
            fresh = started - committed_at <= self.options.fast_path_max_delay
            last = {normal_key(t.key): t for t in items}  # the last write of each key wins
            images: dict[Key, dict[str, Any]] = {}
            slow: list[Key] = []
            for k, t in last.items():
                if fast is not None and fresh and t.image is not None and not t.deleted:
                    images[k] = t.image
                else:
                    slow.append(k)
            retry_stale(self.data, functools.partial(self._write, rt, a, b, fast, images, slow), a, b)
            if fast is not None and any(t.deleted for t in last.values()):
                deleted = [k for k, t in last.items() if t.deleted]
                self.scheduler.call_later(self.options.delete_recheck_seconds,
                                          functools.partial(self._recheck_deletes, rt, a, b, deleted))
            record_secondary(self.stats, b, len(keys), started)
        except Exception as exc:  # noqa: BLE001 - a secondary failure never fails the request
            cls = error_class(exc)
            record_secondary(self.stats, b, len(keys), started, cls)
            log.warning("migration %s: secondary write of %d key(s) of %s to %s failed (%s): %s; queued "
                        "for repair", self.migration, len(keys), rt.name, b.value, cls, short_error(exc))
            # the write is acknowledged and the other store lacks it: until the key is durable in the repair
            # queue (the control store may refuse it too, then it waits in memory) its epoch stays held, so a
            # write fence's barrier cannot pass before the fence's drain can see the key
            self.phase.hold(epoch)
            self.repairs.enqueue(rt.name, keys, reason=f"sync {cls}: {short_error(exc)}", authoritative=a.value,
                                 on_durable=functools.partial(self.phase.leave, epoch))

    def _write(self, rt: TableRuntime, a: Side, b: Side, fast: FastPath | None, images: dict[Key, dict[str, Any]],
               slow: list[Key]) -> None:
        if images:
            assert fast is not None
            applied = write_images(fast, list(images.values()))
            if applied is not None and applied < len(images):
                # the version guard refused an image: either a newer one is there already, or the target
                # holds a stale row whose version is higher (a key deleted and re-inserted, an application
                # that set its version backwards, two ORM processes that bumped the same version). The
                # version column is not proof: re-read the authoritative rows under their lock (docs/architecture.md
                # rule 1)
                mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), list(images))
        if slow:
            mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), slow)

    def _recheck_deletes(self, rt: TableRuntime, a: Side, b: Side, keys: list[Key]) -> None:
        """A mirrored delete, again a moment later: a concurrent insert's late image cannot resurrect the row."""
        def run() -> None:
            try:
                mirror_keys(self.data[a], self.data[b], rt.mapping_from(a), keys)
            except Exception as exc:  # noqa: BLE001 - the repair queue takes the keys
                self.repairs.enqueue(rt.name, keys, reason=f"delete re-check {error_class(exc)}",
                                     authoritative=a.value)

        with contextlib.suppress(RuntimeError):
            self.executor.submit(run)
