"""Activities of the relay: thin adapters from Temporal to :mod:`dualwrite.relay` and :mod:`dualwrite.triggers`.

``relay_drain`` is one long-running activity: it drains both stores' key logs through the mirror primitive
batch after batch, heartbeats its counters, sleeps ``poll_seconds`` when the logs are empty, and returns after
``max_seconds`` (or, with ``finish``, as soon as they are empty). Cancellation and worker shutdown are
noticed between batches; a batch is committed (its entries deleted) only after its keys were mirrored, so a
kill at any instant redoes at most one batch, harmlessly. The relay records its lag and counts in
``dualwrite_stats`` like an application instance does.

``relay_catch_up`` is what the migration calls before it relies on the other store (a rollback's level
check, a phase's verification): it mirrors, alongside the relay, every entry logged up to its start.

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

from activities import cdc_relay
from activities.core import heartbeating, log_point, logs_behind, mapped_errors, safe_message, table_exists
from activities.stores import StoreCache
from dualwrite import control, outbox, triggers
from dualwrite import stats as st
from dualwrite.mapping import TableMapping
from dualwrite.relay import RelayResult, drain
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.store import Store
from workflows.relay import (
    RELAY_CATCH_UP,
    RELAY_DENY,
    RELAY_DRAIN,
    RELAY_SETUP,
    RELAY_TEARDOWN,
    CatchUpInput,
    CatchUpResult,
    DenyWritesInput,
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
        return [self.setup, self.drain, self.teardown, self.catch_up, self.deny_writes]

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
        with mapped_errors(), heartbeating():
            spec = inp.spec
            old, new, _ctl = self._stores(spec)
            out = RelaySetupResult()
            if spec.strategy is Strategy.CDC:
                out.triggers = cdc_relay.setup_capture(spec, old, new, _ctl)
                return out
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
        """Remove the capture triggers (the logs stay, empty, for a possible later restart).

        The trigger names follow from the spec alone: no table is reflected, because at CLEANUP the old
        table may already be retired (renamed, with its triggers removed) and a reflection would fail on
        every retry, leaving the relay unable to finish."""
        with mapped_errors(), heartbeating():
            spec = inp.spec
            old, new, _ctl = self._stores(spec)
            if spec.strategy is Strategy.CDC:
                cdc_relay.teardown_capture(spec, old, new, _ctl)
            for t in spec.tables if spec.strategy is not Strategy.CDC else ():
                for store, table in ((old, t.source), (new, t.target_table)):
                    try:
                        triggers.remove_triggers(store, spec.name, table)
                    except Exception:
                        if table_exists(store, table):
                            raise
                        # retired at CLEANUP (renamed or dropped), and its triggers with it
            # the new store serves the tables now: nothing of the denied writes stays there (the retired old
            # tables keep refusing writes that bypass dualwrite, with their counters)
            new_tables = [t.target_table for t in spec.tables]
            triggers.allow_writes(new, spec.name, new_tables)
            triggers.drop_refusal_counters(new, spec.name, new_tables)

    @activity.defn(name=RELAY_DENY, no_thread_cancel_exception=True)
    def deny_writes(self, inp: DenyWritesInput) -> None:
        """Make the migrated tables of the named stores refuse (or accept again) writes that bypass dualwrite:
        the write cutover's "denied tables" for applications that write without the adapter. Idempotent."""
        with mapped_errors():
            spec = inp.spec
            old, new, _ctl = self._stores(spec)
            if spec.strategy is Strategy.CDC and inp.deny:
                # capture exists before anything the denial is for happens (the backfill's first range)
                cdc_relay.setup_capture(spec, old, new, _ctl)
            sides = {"old": (old, [t.source for t in spec.tables]),
                     "new": (new, [t.target_table for t in spec.tables])}
            for side in inp.deny:
                store, tables = sides[side]
                triggers.deny_writes(store, spec.name, tables, getattr(spec, inp.authoritative))
            for side in inp.allow:
                store, tables = sides[side]
                triggers.allow_writes(store, spec.name, tables)

    @activity.defn(name=RELAY_DRAIN, no_thread_cancel_exception=True)
    def drain(self, inp: RelayDrainInput) -> RelayDrainResult:
        """Drain both stores' key logs continuously for ``max_seconds`` (see the module docstring)."""
        with mapped_errors():
            spec = inp.spec
            old, new, ctl = self._stores(spec)
            if spec.strategy is Strategy.CDC:
                return cdc_relay.drain(self, inp, old, new, ctl, _absorb,
                                       lambda: _flush(self._stats_for(spec), ctl))
            stats = self._stats_for(spec)
            mapping_for = self._mapping_for(spec)
            logs = (outbox.OUTBOX,) if spec.strategy is Strategy.OUTBOX else (outbox.CHANGELOG,)
            out = RelayDrainResult()
            started = time.monotonic()
            next_flush = started + STATS_FLUSH_SECONDS
            phase = ""
            denied = triggers.denial_applies(spec)
            while not _stopping():
                # the published state before every round: with denied writes only the authoritative store's
                # log is mirrored, and a round never starts under an authority that has just moved
                state = control.read_state(ctl, spec.name)
                phase = state.phase if state else "PREPARE"
                discard = ("new",) if phase in RETIRED_OLD else ()
                directions = (triggers.authoritative_side(phase),) if denied else ("old", "new")
                res = drain(old, new, spec.name, mapping_for, logs=logs, directions=directions, discard=discard,
                            limit=inp.batch, max_seconds=max(0.5, inp.poll_seconds * 5), control_store=ctl,
                            stats=stats, should_stop=_stopping)
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
            if denied:
                out.refused_writes = _refused(spec, old, new)
                stats.gauge(st.REFUSED_WRITES, float(sum(out.refused_writes.values())))
            if lag is not None:
                out.lag_seconds = max(out.lag_seconds, lag)
            _flush(stats, ctl)
            return out


    @activity.defn(name=RELAY_CATCH_UP, no_thread_cancel_exception=True)
    def catch_up(self, inp: CatchUpInput) -> CatchUpResult:
        """Mirror every entry the key logs hold *now* (both stores), for at most ``max_seconds``.

        The drain point is each log's newest entry id at the start; the catch-up is reached once no entry at
        or below it is left, whoever mirrored it (this activity, or the relay: both lock entries with
        ``SKIP LOCKED``, so they share the work). Entries logged meanwhile are mirrored too when there is
        time, but are not waited for: under constant writes a log is never empty, while a point is always
        reached. Used before a repairing verification that must not race a lagging relay."""
        with mapped_errors():
            spec = inp.spec
            old, new, ctl = self._stores(spec)
            if spec.strategy is Strategy.CDC:
                return cdc_relay.catch_up(self, inp, old, new, ctl, _absorb_catch_up)
            logs = (outbox.OUTBOX,) if spec.strategy is Strategy.OUTBOX else (outbox.CHANGELOG,)
            started = time.monotonic()
            sides = (inp.authoritative,) if inp.authoritative in ("old", "new") else ("old", "new")
            points = _drain_points(old, new, spec.name, logs, sides)
            out = CatchUpResult()
            relayed = RelayResult()
            while True:
                out.behind = sum(logs_behind(store, spec.name, lg, point) for store, lg, point in points)
                if not out.behind or _stopping() or time.monotonic() - started >= inp.max_seconds:
                    break
                res = drain(old, new, spec.name, self._mapping_for(spec), logs=logs, directions=sides,
                            limit=inp.batch, max_seconds=1.0, control_store=ctl, should_stop=_stopping)
                relayed += res
                activity.heartbeat({"behind": out.behind, "mirrored": relayed.mirrored})
                if not res.entries:
                    time.sleep(0.05)  # the relay holds the rest locked: let it commit
            out.reached = out.behind == 0
            _absorb_catch_up(out, relayed)
            out.seconds = time.monotonic() - started
            if not out.reached:
                log.warning("relay catch-up of %s: %d entries still behind after %.1fs", spec.name, out.behind,
                            out.seconds)
            return out


def _refused(spec: MigrationSpec, old: Store, new: Store) -> dict[str, int]:
    """'store/table' -> writes refused so far by the denied-writes triggers (engines that count them)."""
    out: dict[str, int] = {}
    for store, tables in ((old, [t.source for t in spec.tables]), (new, [t.target_table for t in spec.tables])):
        for table in tables:
            try:
                n = triggers.refused_writes(store, spec.name, table)
            except Exception:  # noqa: BLE001 - a count is information, never a reason to stop the relay
                n = None
            if n:
                out[f"{store.name}/{table}"] = n
    return out


def _drain_points(old: Store, new: Store, migration: str, logs: tuple[str, ...],
                  sides: tuple[str, ...] = ("old", "new")) -> list[tuple[Store, str, int]]:
    """(store, log, newest id) of every non-empty key log of the migration on the given sides' stores."""
    points = []
    for store in [{"old": old, "new": new}[side] for side in sides]:
        present = store.table_names()
        for lg in logs:
            point = log_point(store, migration, lg) if lg in present else None
            if point is not None:
                points.append((store, lg, point))
    return points


def _absorb_catch_up(out: CatchUpResult, res: RelayResult) -> None:
    out.counters = RelayCounters(entries=res.entries, mirrored=res.mirrored, failed=res.failed,
                                 discarded=res.discarded, batches=res.batches)
    for e in res.errors:
        msg = safe_message(Exception(e), 300)
        if msg not in out.errors and len(out.errors) < 5:
            out.errors.append(msg)


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
