"""Activities of the relay: thin adapters from Temporal to the capture methods' store side
(:mod:`dualwrite.capture.store_side`), which calls :mod:`dualwrite.relay`, :mod:`dualwrite.triggers` and
:mod:`dualwrite.cdc`. Nothing here knows a write strategy: the method's store side does.

``relay_drain`` is one long-running activity: it drains the captured changes through the mirror primitive
round after round, heartbeats its counters, sleeps ``poll_seconds`` when nothing is waiting, and returns after
``max_seconds`` (or, with ``finish``, as soon as nothing is left). Cancellation and worker shutdown are
noticed between batches; a batch is committed (its entries deleted, its log position advanced) only after its
keys were mirrored, so a kill at any instant redoes at most one batch, harmlessly. The relay records its lag
and counts in ``dualwrite_stats`` like an application instance does.

``relay_catch_up`` is what the migration calls before it relies on the other store (a rollback's level
check, a phase's verification): it mirrors, alongside the relay, every change captured up to its start.

The stores the relay writes through are marked as replica sessions, so capture triggers ignore the relay's
own mirror writes (otherwise every mirrored row would be captured again on the other side).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

from activities.errors import mapped_errors, safe_message, transient
from activities.heartbeat import heartbeating, sleep, stopping
from activities.stores import StoreCache
from dualwrite import control, triggers
from dualwrite import stats as st
from dualwrite.capture.store_side import RelayStores, allow_new_store, store_side
from dualwrite.cdc import capture as cdc_capture
from dualwrite.relay import RelayResult
from dualwrite.spec import MigrationSpec, Strategy
from dualwrite.stores import is_redis
from workflows.relay import (
    RELAY_CATCH_UP,
    RELAY_CLEAR_LOSSES,
    RELAY_DENY,
    RELAY_DRAIN,
    RELAY_LOSS_MARKS,
    RELAY_SETUP,
    RELAY_TEARDOWN,
    CatchUpInput,
    CatchUpResult,
    ClearLossesInput,
    DenyWritesInput,
    LossMarksInput,
    RelayCounters,
    RelayDrainInput,
    RelayDrainResult,
    RelaySetupInput,
    RelaySetupResult,
)

__all__ = ["RelayActivities"]

log = logging.getLogger("dualwrite.activities.relay")

STATS_FLUSH_SECONDS = 10.0

RETRY_PAUSE_SECONDS = 1.0
"""Pause before a round that failed on a transient error is tried again within the same attempt."""

OUTAGE_GRACE_SECONDS = 30.0
"""A drain whose budget is over in the middle of an outage keeps trying this long before its attempt fails:
a failed attempt waits out the retry policy's backoff (up to 30 s) and a short cut should not cost that."""

_T = TypeVar("_T")


class RelayActivities:
    """The relay's activities, sharing the worker's :class:`StoreCache`."""

    def __init__(self, stores: StoreCache, *, identity: str | None = None) -> None:
        self.stores = stores
        self.identity = identity or f"relay@{socket.gethostname()}:{os.getpid()}"
        self._stats: dict[str, st.Stats] = {}
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    def all(self) -> list[Any]:
        return [self.setup, self.drain, self.teardown, self.catch_up, self.deny_writes, self.clear_losses,
                self.loss_marks]

    def _stores(self, spec: MigrationSpec, digest: str | None = None) -> RelayStores:
        rs = self.stores.relay_stores(spec, digest)
        for s in (rs.old, rs.new):
            if not is_redis(s):  # Redis has no triggers to capture the relay's writes
                triggers.mark_replica(s)  # our own mirror writes must not be captured again
        if spec.control not in self._ready:
            control.ensure_schema(rs.control)
            st.ensure_schema(rs.control)
            self._ready.add(spec.control)
        return rs

    def _stats_for(self, spec: MigrationSpec) -> st.Stats:
        with self._lock:
            s = self._stats.get(spec.name)
            if s is None:
                s = self._stats[spec.name] = st.Stats(spec.name, self.identity)
            return s

    @activity.defn(name=RELAY_SETUP, no_thread_cancel_exception=True)
    def setup(self, inp: RelaySetupInput) -> RelaySetupResult:
        """Start capture on both stores: the key logs (with ``triggers``, the capture triggers that fill them:
        the new store's keeps the old one in sync after write cutover), or the database log's slot and
        publication / binlog position. Idempotent."""
        with mapped_errors(), heartbeating():
            spec, digest = self.stores.spec_of(inp)
            logs, captured = store_side(spec).setup(self._stores(spec, digest))
            return RelaySetupResult(logs=logs, triggers=captured)

    @activity.defn(name=RELAY_TEARDOWN, no_thread_cancel_exception=True)
    def teardown(self, inp: RelaySetupInput) -> None:
        """Stop capture (key logs stay, empty, for a possible later restart) and lift the new store's denial.

        What to remove follows from the spec alone: no table is reflected, because at CLEANUP the old
        table may already be retired (renamed, with its triggers removed) and a reflection would fail on
        every retry, leaving the relay unable to finish."""
        with mapped_errors(), heartbeating():
            spec, digest = self.stores.spec_of(inp)
            rs = self._stores(spec, digest)
            store_side(spec).teardown(rs)
            allow_new_store(rs)

    @activity.defn(name=RELAY_DENY, no_thread_cancel_exception=True)
    def deny_writes(self, inp: DenyWritesInput) -> None:
        """Make the migrated tables of the named stores refuse (or accept again) writes that bypass dualwrite:
        the write cutover's "denied tables" for applications that write without the adapter. Idempotent."""
        with mapped_errors():
            spec, digest = self.stores.spec_of(inp)
            rs = self._stores(spec, digest)
            if inp.deny:
                store_side(spec).before_denial(rs)
            for side in inp.deny:
                triggers.deny_writes(rs.store(side), spec.name, rs.tables(side), getattr(spec, inp.authoritative))
            for side in inp.allow:
                triggers.allow_writes(rs.store(side), spec.name, rs.tables(side))

    @activity.defn(name=RELAY_CLEAR_LOSSES, no_thread_cancel_exception=True)
    def clear_losses(self, inp: ClearLossesInput) -> int:
        """A clean verification with repair of the whole migration levelled what log capture had missed:
        forget the loss marks noted before it started, so the relay's status stops listing them (the cutover
        gate already counts them as levelled). The number of marks cleared."""
        with mapped_errors():
            spec, digest = self.stores.spec_of(inp)
            if spec.strategy is not Strategy.CDC:
                return 0
            rs = self._stores(spec, digest)
            cleared = cdc_capture.clear_losses(rs.control, spec.name, [rs.old, rs.new],
                                               before=inp.before.timestamp(), upto=inp.upto)
            for what in cleared:
                log.info("relay %s: capture loss levelled by a verification with repair: %s", spec.name, what)
            return len(cleared)

    @activity.defn(name=RELAY_LOSS_MARKS, no_thread_cancel_exception=True)
    def loss_marks(self, inp: LossMarksInput) -> dict[str, int]:
        """The capture-loss sequence of each store as a verification starts (store name -> number): its
        :meth:`clear_losses` then forgets only losses up to these, one counter, no clock compared."""
        with mapped_errors():
            spec, digest = self.stores.spec_of(inp)
            if spec.strategy is not Strategy.CDC:
                return {}
            rs = self._stores(spec, digest)
            return cdc_capture.loss_marks(rs.control, spec.name, [rs.old, rs.new])

    @activity.defn(name=RELAY_DRAIN, no_thread_cancel_exception=True)
    def drain(self, inp: RelayDrainInput) -> RelayDrainResult:
        """Drain the captured changes continuously for ``max_seconds`` (see the module docstring).

        A round that fails on a transient error (a store refusing or cutting connections, a deadlock) is
        retried within this attempt after a short pause; the attempt fails (retryably) only once the budget
        is over and the outage has lasted :data:`OUTAGE_GRACE_SECONDS`."""
        out = RelayDrainResult()
        with mapped_errors(), heartbeating(details=lambda: out):
            retry = _Retry("drain", time.monotonic() + inp.max_seconds, grace=OUTAGE_GRACE_SECONDS)
            spec, digest = retry.call(lambda: self.stores.spec_of(inp), "reading the spec")
            retry.migration = spec.name
            rs = retry.call(lambda: self._stores(spec, digest), "opening the stores")
            side = store_side(spec)
            stats = self._stats_for(spec)
            started = time.monotonic()
            next_flush = started + STATS_FLUSH_SECONDS
            phase = ""
            while not stopping():
                try:
                    # the published state before every round: a round never starts under an authority that has
                    # just moved
                    phase = _published_phase(rs)
                    res = side.drain_round(rs, phase, limit=inp.batch, max_seconds=max(0.5, inp.poll_seconds * 5),
                                           stats=stats, should_stop=stopping)
                except Exception as exc:  # noqa: BLE001 - transient ones are retried, the rest re-raised
                    retry.failed(exc, "a drain round")  # raises unless transient and within the budget
                    continue
                retry.succeeded("a drain round")
                _absorb(out, res)
                activity.heartbeat(out)
                if time.monotonic() >= next_flush:
                    _flush(stats, rs)
                    next_flush = time.monotonic() + STATS_FLUSH_SECONDS
                if res.entries:
                    continue
                if inp.finish or time.monotonic() - started >= inp.max_seconds:
                    break
                sleep(inp.poll_seconds)
            out.phase = phase
            out.errors = _errors(out.errors, RelayResult(errors=retry.errors))
            backlog = side.backlog(rs)
            for warning in backlog.warnings:
                log.warning("relay %s: %s", spec.name, warning)
            out.remaining = backlog.remaining
            out.capture_lost = backlog.lost
            for lost in backlog.lost:
                log.error("relay %s: %s", spec.name, lost)
            stats.gauge(st.RELAY_DEPTH, float(backlog.remaining))
            if backlog.refused_writes is not None:
                out.refused_writes = backlog.refused_writes
                stats.gauge(st.REFUSED_WRITES, float(sum(backlog.refused_writes.values())))
            if backlog.lag_seconds is not None:
                out.lag_seconds = max(out.lag_seconds, backlog.lag_seconds)
            _flush(stats, rs)
            return out

    @activity.defn(name=RELAY_CATCH_UP, no_thread_cancel_exception=True)
    def catch_up(self, inp: CatchUpInput) -> CatchUpResult:
        """Mirror every change captured *now* (both stores, or the ``authoritative`` one), for at most
        ``max_seconds``.

        The catch-up point is where each store's capture ends at the start (a key log's newest entry, a
        database log's position); it is reached once nothing at or before it is left, whoever mirrored it
        (this activity, or the relay: they share the work). Changes captured meanwhile are mirrored too when
        there is time, but are not waited for: under constant writes a log is never empty, while a point is
        always reached. Used before a repairing verification that must not race a lagging relay.

        A store that refuses or cuts connections for a while does not fail the attempt: the round is retried
        after a short pause, towards the same points (taken once, at the start). When ``max_seconds`` is over
        the result says not reached, with the outage among its errors; the caller refuses what needed the
        catch-up, with that reason. Only when the points themselves could not be read does the attempt fail
        (retryably)."""
        out = CatchUpResult()
        relayed = RelayResult()
        with mapped_errors(), heartbeating(details=lambda: {"behind": out.behind, "mirrored": relayed.mirrored}):
            started = time.monotonic()
            retry = _Retry("catch-up", started + inp.max_seconds)
            spec, digest = retry.call(lambda: self.stores.spec_of(inp), "reading the spec")
            retry.migration = spec.name
            rs = retry.call(lambda: self._stores(spec, digest), "opening the stores")
            side = store_side(spec)
            sides = (inp.authoritative,) if inp.authoritative in ("old", "new") else ("old", "new")
            points = retry.call(lambda: side.catch_up_points(rs, sides), "reading the catch-up points")
            phase = retry.call(lambda: _published_phase(rs), "reading the published phase")
            out.behind = len(points)  # until the first look says otherwise
            while not stopping():
                try:
                    out.behind, waiting = side.behind(rs, points)
                    if not out.behind or time.monotonic() - started >= inp.max_seconds:
                        break
                    res = side.catch_up_round(rs, waiting, phase, limit=inp.batch, should_stop=stopping)
                except Exception as exc:  # noqa: BLE001 - transient ones are retried, the rest re-raised
                    if not retry.failed(exc, "a catch-up round", give_up=True):
                        break  # the budget is over in an outage: not reached, with the reason in errors
                    continue
                retry.succeeded("a catch-up round")
                relayed += res
                activity.heartbeat({"behind": out.behind, "mirrored": relayed.mirrored})
                if not res.entries:
                    time.sleep(0.05)  # the relay holds the rest: let it commit
            out.reached = out.behind == 0
            out.counters = _counters(relayed)
            out.errors = _errors(list(retry.errors), relayed)
            out.seconds = time.monotonic() - started
            if not out.reached:
                log.warning("relay catch-up of %s: %d still behind after %.1fs", spec.name, out.behind, out.seconds)
            return out


class _Retry:
    """Transient failures of one activity attempt, retried in place until its budget is over.

    ``failed`` is called with the error of a step (a round, a look-up): a transient one (activities.errors.
    :func:`~activities.errors.transient`: a refused or cut connection, a deadlock, a busy slot) is logged
    (type and first line, redacted: never row data), the activity heartbeats, and the step is retried
    after :data:`RETRY_PAUSE_SECONDS`; anything else is raised at once. Once the deadline has passed and the
    current outage has lasted ``grace`` seconds, the error is raised (mapped to a retryable failure), or,
    with ``give_up``, ``failed`` returns False so the caller can report what it has."""

    def __init__(self, what: str, deadline: float, *, grace: float = 0.0) -> None:
        self.what = what
        self.migration = "?"
        self.deadline = deadline
        self.grace = grace
        self.errors: list[str] = []
        self._outage_started: float | None = None
        self._failures = 0

    def call(self, fn: Callable[[], _T], step: str) -> _T:
        while True:
            try:
                value = fn()
            except Exception as exc:  # noqa: BLE001 - transient ones are retried, the rest re-raised
                self.failed(exc, step)
                continue
            self.succeeded(step)
            return value

    def failed(self, exc: Exception, step: str, *, give_up: bool = False) -> bool:
        if not transient(exc):
            raise exc
        now = time.monotonic()
        if self._outage_started is None:
            self._outage_started = now
        self._failures += 1
        message = f"{step} failed: {safe_message(exc, 300)}"
        if message not in self.errors and len(self.errors) < 3:
            self.errors.append(message)
        if stopping() or (now >= self.deadline and now - self._outage_started >= self.grace):
            log.warning("relay %s of %s: %s; giving up after %d transient failures in %.1fs", self.what,
                        self.migration, message, self._failures, now - self._outage_started)
            if give_up:
                return False
            raise exc
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("relay %s of %s: %s (transient, %d so far); retrying in %.0fs within this attempt",
                        self.what, self.migration, message, self._failures, RETRY_PAUSE_SECONDS)
        activity.heartbeat()
        sleep(RETRY_PAUSE_SECONDS)
        return True

    def succeeded(self, step: str) -> None:
        if self._outage_started is not None:
            log.info("relay %s of %s: %s succeeded again after %d transient failures in %.1fs", self.what,
                     self.migration, step, self._failures, time.monotonic() - self._outage_started)
        self._outage_started = None
        self._failures = 0


def _published_phase(rs: RelayStores) -> str:
    state = control.read_state(rs.control, rs.spec.name)
    return state.phase if state else "PREPARE"


def _counters(res: RelayResult) -> RelayCounters:
    return RelayCounters(entries=res.entries, mirrored=res.mirrored, failed=res.failed, discarded=res.discarded,
                         batches=res.batches)


def _errors(errors: list[str], res: RelayResult) -> list[str]:
    """A few error messages (first lines, redacted, no row data), without repeats."""
    for e in res.errors:
        msg = safe_message(Exception(e), 300)
        if msg not in errors and len(errors) < 5:
            errors.append(msg)
    return errors


def _absorb(out: RelayDrainResult, res: RelayResult) -> None:
    out.counters.add(_counters(res))
    if res.entries:
        out.lag_seconds = res.lag_seconds
    out.errors = _errors(out.errors, res)


def _flush(stats: st.Stats, rs: RelayStores) -> None:
    try:
        stats.flush(rs.control)
    except Exception as exc:  # noqa: BLE001 - kept for the next flush
        log.warning("relay: cannot flush statistics (%s)", type(exc).__name__)
