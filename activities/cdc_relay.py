"""The relay's activities for strategy ``cdc``: the same drain and catch-up as for ``triggers``, with the
database's own log as the key source (see :mod:`dualwrite.cdc.capture`).

- setup / the denied-writes activity: start capture on both stores (idempotent). The workflow runs the
  denied-writes activity in every phase's work before anything else, so capture exists before the first
  backfill range is copied whoever started the relay, and changes captured during the backfill win.
- drain: each round mirrors the authoritative store's log only; the other store's log holds nothing but
  dualwrite's own writes (the application's are refused there) and is skipped while it is denied.
- catch-up: the log's end now is the drain point; reached when capture has applied up to it.
- teardown (CLEANUP): drop slots and publications, forget binlog positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from temporalio import activity

from dualwrite import control, triggers
from dualwrite.cdc import capture
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import TableMapping
from dualwrite.relay import RelayResult
from dualwrite.spec import MigrationSpec
from dualwrite.stats import RELAY, RELAY_DEPTH, RELAY_LAG
from dualwrite.store import Store

if TYPE_CHECKING:
    from activities.relay import RelayActivities
    from workflows.relay import CatchUpInput, CatchUpResult, RelayDrainInput, RelayDrainResult

log = logging.getLogger("dualwrite.activities.cdc")

#: the old store is retired in these phases: its capture is left alone
RETIRED_OLD = ("CLEANUP", "DONE")


def _stopping() -> bool:
    return activity.is_cancelled() or activity.is_worker_shutdown()


def side_tables(spec: MigrationSpec) -> dict[str, list[str]]:
    """'old' / 'new' -> the migrated tables as that store names them (from the spec alone)."""
    return {"old": [t.source for t in spec.tables], "new": [t.target_table for t in spec.tables]}


def setup_capture(spec: MigrationSpec, old: Store, new: Store, ctl: Store) -> list[str]:
    """Start capture on both stores (idempotent); returns 'store/table' of what is captured."""
    out = []
    tables = side_tables(spec)
    for side, store in (("old", old), ("new", new)):
        capture.setup(store, ctl, spec.name, tables[side])
        out += [f"{store.name}/{t}" for t in tables[side]]
    return out


def teardown_capture(spec: MigrationSpec, old: Store, new: Store, ctl: Store) -> None:
    for store in (old, new):
        capture.teardown(store, ctl, spec.name)


class _Side:
    """One store's capture: its tables' keys and the mapping of each towards the other store."""

    def __init__(self, acts: RelayActivities, spec: MigrationSpec, side: str) -> None:
        self.reverse = side == "new"
        self.mappings: dict[str, TableMapping] = {}
        self.tables: list[TableKeys] = []
        for t in spec.tables:
            store, _, m = acts.stores.mapping(spec, t.source, reverse=self.reverse)
            self.mappings[m.source_table] = m
            # the columns as reflected when the mapping was compiled (cached): the stream must show the same
            self.tables.append(TableKeys(m.source_table, list(m.source_key), list(m.key_kinds),
                                         columns=list(store.describe(m.source_table).columns)))

    def mapping_for(self) -> Callable[[str], TableMapping]:
        return lambda table: self.mappings[table]


def _denied(store: Store, migration: str, tables: list[str]) -> Callable[[], bool]:
    return lambda: all(triggers.writes_denied(store, migration, t) for t in tables)


def drain_round(acts: RelayActivities, spec: MigrationSpec, old: Store, new: Store, ctl: Store, phase: str,
                *, limit: int, max_seconds: float, sides: tuple[str, ...] | None = None) -> RelayResult:
    """Mirror the authoritative store's captured changes for up to ``max_seconds`` (until its log is empty),
    and skip the other store's log while it is denied."""
    authoritative = triggers.authoritative_side(phase)
    stores = {"old": (old, new), "new": (new, old)}
    if phase in RETIRED_OLD and sides is None:
        # the old store is retired: what the new store captures is not mirrored anywhere any more
        capture.skip(new, ctl, spec.name, lambda: True)
        return RelayResult()
    drain_sides = sides or (authoritative,)
    total = RelayResult()
    started = time.monotonic()
    for side in drain_sides:
        source, target = stores[side]
        state = _Side(acts, spec, side)
        while not _stopping():
            res = capture.drain_batch(source, target, ctl, spec.name, state.tables, state.mapping_for(),
                                      reverse=state.reverse, limit=limit)
            total += res
            if not res.entries or time.monotonic() - started > max_seconds:
                break
    if sides is None:
        other = "new" if authoritative == "old" else "old"
        if not (other == "old" and phase in RETIRED_OLD):
            store = stores[other][0]
            tables = side_tables(spec)[other]
            try:
                capture.skip(store, ctl, spec.name, _denied(store, spec.name, tables))
            except Exception as exc:  # noqa: BLE001 - a skip is housekeeping; the next round tries again
                log.warning("cdc %s: cannot skip the %s store's log: %s", spec.name, other, type(exc).__name__)
    return total


def drain(acts: RelayActivities, inp: RelayDrainInput, old: Store, new: Store, ctl: Store,
          absorb: Callable[[Any, RelayResult], None], flush: Callable[[], None]) -> RelayDrainResult:
    """The ``relay_drain`` activity for ``cdc`` (same contract as for the key logs)."""
    from workflows.relay import RelayDrainResult  # noqa: PLC0415

    spec = inp.spec
    stats = acts._stats_for(spec)
    out = RelayDrainResult()
    started = time.monotonic()
    next_flush = started + 10.0
    phase = ""
    while not _stopping():
        state = control.read_state(ctl, spec.name)
        phase = state.phase if state else "PREPARE"
        res = drain_round(acts, spec, old, new, ctl, phase, limit=max(inp.batch, 2000),
                          max_seconds=max(0.5, inp.poll_seconds * 5))
        absorb(out, res)
        if res.entries:
            stats.record(counts=[(RELAY, "entries", res.entries), (RELAY, "mirrored", res.mirrored),
                                 (RELAY, "failed", res.failed)])
            stats.gauge(RELAY_LAG, res.lag_seconds)
        activity.heartbeat(out)
        if time.monotonic() >= next_flush:
            flush()
            next_flush = time.monotonic() + 10.0
        if res.entries:
            continue
        if inp.finish or time.monotonic() - started >= inp.max_seconds:
            break
        time.sleep(inp.poll_seconds)
    out.phase = phase
    behind = 0
    for store in (old, new):
        try:
            n = capture.lag_bytes(store, ctl, spec.name)
            warning = capture.retention_warning(store, ctl, spec.name)
        except Exception:  # noqa: BLE001 - information only
            n, warning = None, None
        behind += n or 0
        if warning:
            log.warning("cdc %s", warning)
    out.remaining = behind  # bytes of log not yet applied (not entries: a log has no rows to count)
    stats.gauge(RELAY_DEPTH, float(behind))
    flush()
    return out


def catch_up(acts: RelayActivities, inp: CatchUpInput, old: Store, new: Store, ctl: Store,
             absorb: Callable[[CatchUpResult, RelayResult], None]) -> CatchUpResult:
    """The ``relay_catch_up`` activity for ``cdc``: apply each captured log up to its end at the start."""
    from workflows.relay import CatchUpResult  # noqa: PLC0415

    spec = inp.spec
    started = time.monotonic()
    sides = (inp.authoritative,) if inp.authoritative in ("old", "new") else ("old", "new")
    stores = {"old": old, "new": new}
    points = [(side, capture.end_point(stores[side], ctl, spec.name)) for side in sides]
    points = [(side, p) for side, p in points if p is not None]
    out = CatchUpResult()
    relayed = RelayResult()
    state = control.read_state(ctl, spec.name)
    phase = state.phase if state else "PREPARE"
    while True:
        waiting = [side for side, p in points if not capture.reached(stores[side], ctl, spec.name, p)]
        out.behind = len(waiting)
        if not waiting or _stopping() or time.monotonic() - started >= inp.max_seconds:
            break
        res = drain_round(acts, spec, old, new, ctl, phase, limit=inp.batch, max_seconds=1.0,
                          sides=tuple(waiting))
        relayed += res
        activity.heartbeat({"behind": out.behind, "mirrored": relayed.mirrored})
        if not res.entries:
            time.sleep(0.05)  # the relay holds the slot: let it apply and advance
    out.reached = out.behind == 0
    absorb(out, relayed)
    out.seconds = time.monotonic() - started
    if not out.reached:
        log.warning("cdc catch-up of %s: %d logs still behind after %.1fs", spec.name, out.behind, out.seconds)
    return out
