"""Activities of the relay: thin adapters from Temporal to :mod:`dualwrite.relay` and :mod:`dualwrite.triggers`.

``relay_drain`` is one long-running activity: it drains both stores' key logs through the mirror primitive
batch after batch, heartbeats its counters, sleeps ``poll_seconds`` when the logs are empty, and returns after
``max_seconds`` (or, with ``finish``, as soon as they are empty). Cancellation and worker shutdown are
noticed between batches; a batch is committed (its entries deleted) only after its keys were mirrored, so a
kill at any instant redoes at most one batch, harmlessly. The relay records its lag and counts in
``dualwrite_stats`` like an application instance does.

The stores the relay writes through are marked as replica sessions, so capture triggers ignore the relay's
own mirror writes (otherwise every mirrored row would be captured again on the other side).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from temporalio import activity

from activities.core import mapped_errors, safe_message
from activities.stores import StoreCache
from dualwrite import control, outbox, triggers
from dualwrite import stats as st
from dualwrite.mapping import TableMapping
from dualwrite.relay import RelayResult, drain
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.store import Store
from workflows.relay import (
    RELAY_DRAIN,
    RELAY_SETUP,
    RELAY_TEARDOWN,
    RelayCounters,
    RelayDrainInput,
    RelayDrainResult,
    RelaySetupInput,
    RelaySetupResult,
)

log = logging.getLogger("dualwrite.activities.relay")

#: the old store is retired in these phases: keys logged in the new store are no longer mirrored back
RETIRED_OLD = ("CLEANUP", "DONE")
STATS_FLUSH_SECONDS = 10.0


def _stopping() -> bool:
    return activity.is_cancelled() or activity.is_worker_shutdown()


class RelayActivities:
    """The relay's activities, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache, *, identity: str | None = None) -> None:
        self.stores = stores
        self.identity = identity or f"relay@{socket.gethostname()}:{os.getpid()}"
        self._stats: dict[str, st.Stats] = {}
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    def all(self) -> list[Any]:
        return [self.setup, self.drain, self.teardown]

    def _stores(self, spec: MigrationSpec) -> tuple[Store, Store, Store]:
        old, new, ctl = self.stores.store(spec.old), self.stores.store(spec.new), self.stores.store(spec.control)
        for s in (old, new):
            triggers.mark_replica(s)  # our own mirror writes must not be captured again
        if spec.control not in self._ready:
            control.ensure_schema(ctl)
            st.ensure_schema(ctl)
            self._ready.add(spec.control)
        return old, new, ctl

    def _mapping_for(self, spec: MigrationSpec) -> Any:
        def mapping_for(table: str, reverse: bool) -> TableMapping:
            return self.stores.mapping(spec, table, reverse=reverse)[2]

        return mapping_for

    def _stats_for(self, spec: MigrationSpec) -> st.Stats:
        with self._lock:
            s = self._stats.get(spec.name)
            if s is None:
                s = self._stats[spec.name] = st.Stats(spec.name, self.identity)
            return s

    @activity.defn(name=RELAY_SETUP, no_thread_cancel_exception=True)
    def setup(self, inp: RelaySetupInput) -> RelaySetupResult:
        """Create the key logs on both stores; with ``triggers``, (re)install the capture triggers on both
        (the new store's capture keeps the old one in sync after write cutover). Idempotent."""
        with mapped_errors():
            spec = inp.spec
            old, new, _ctl = self._stores(spec)
            out = RelaySetupResult()
            logs = [outbox.OUTBOX] if spec.strategy is Strategy.OUTBOX else [outbox.CHANGELOG]
            for store in (old, new):
                for lg in logs:
                    outbox.ensure_log(store, lg)
                    out.logs.append(f"{store.name}/{lg}")
            if spec.strategy is Strategy.TRIGGERS:
                for t in spec.tables:
                    mapping = self.stores.mapping(spec, t.source)[2]
                    triggers.install_triggers(old, spec.name, mapping.source_table, list(mapping.source_key))
                    out.triggers.append(f"{old.name}/{mapping.source_table}")
                    triggers.install_triggers(new, spec.name, mapping.target_table, list(mapping.target_key))
                    out.triggers.append(f"{new.name}/{mapping.target_table}")
            return out

    @activity.defn(name=RELAY_TEARDOWN, no_thread_cancel_exception=True)
    def teardown(self, inp: RelaySetupInput) -> None:
        """Remove the capture triggers (the logs stay, empty, for a possible later restart)."""
        with mapped_errors():
            spec = inp.spec
            old, new, _ctl = self._stores(spec)
            for t in spec.tables:
                mapping = self.stores.mapping(spec, t.source)[2]
                triggers.remove_triggers(old, spec.name, mapping.source_table)
                triggers.remove_triggers(new, spec.name, mapping.target_table)

    @activity.defn(name=RELAY_DRAIN, no_thread_cancel_exception=True)
    def drain(self, inp: RelayDrainInput) -> RelayDrainResult:
        """Drain both stores' key logs continuously for ``max_seconds`` (see the module docstring)."""
        with mapped_errors():
            spec = inp.spec
            old, new, ctl = self._stores(spec)
            stats = self._stats_for(spec)
            mapping_for = self._mapping_for(spec)
            logs = (outbox.OUTBOX,) if spec.strategy is Strategy.OUTBOX else (outbox.CHANGELOG,)
            out = RelayDrainResult()
            started = time.monotonic()
            next_flush = started + STATS_FLUSH_SECONDS
            last_state = 0.0
            phase = ""
            while not _stopping():
                if time.monotonic() - last_state > 1.0:
                    state = control.read_state(ctl, spec.name)
                    phase = state.phase if state else "PREPARE"
                    last_state = time.monotonic()
                discard = ("new",) if phase in RETIRED_OLD else ()
                res = drain(old, new, spec.name, mapping_for, logs=logs, discard=discard, limit=inp.batch,
                            max_seconds=max(1.0, inp.poll_seconds * 10), control_store=ctl, stats=stats,
                            should_stop=_stopping)
                _absorb(out, res)
                activity.heartbeat(out)
                if time.monotonic() >= next_flush:
                    _flush(stats, ctl)
                    next_flush = time.monotonic() + STATS_FLUSH_SECONDS
                if res.entries:
                    continue
                if inp.finish or time.monotonic() - started >= inp.max_seconds:
                    break
                time.sleep(inp.poll_seconds)
            out.phase = phase
            remaining, lag = 0, None
            for store in (old, new):
                for lg in logs:
                    try:
                        n, age = outbox.log_depth(store, spec.name, log=lg)
                    except Exception:  # noqa: BLE001 - a log that does not exist yet holds nothing
                        continue
                    remaining += n
                    lag = age if lag is None or (age is not None and age > lag) else lag
            out.remaining = remaining
            stats.gauge(st.RELAY_DEPTH, float(remaining))
            if lag is not None:
                out.lag_seconds = max(out.lag_seconds, lag)
            _flush(stats, ctl)
            return out


def _absorb(out: RelayDrainResult, res: RelayResult) -> None:
    out.counters.add(RelayCounters(entries=res.entries, mirrored=res.mirrored, failed=res.failed,
                                   discarded=res.discarded, batches=res.batches))
    if res.entries:
        out.lag_seconds = res.lag_seconds
    for e in res.errors:
        msg = safe_message(Exception(e), 300)
        if msg not in out.errors and len(out.errors) < 5:
            out.errors.append(msg)


def _flush(stats: st.Stats, ctl: Store) -> None:
    try:
        stats.flush(ctl)
    except Exception as exc:  # noqa: BLE001 - kept for the next flush
        log.warning("relay: cannot flush statistics (%s)", type(exc).__name__)
