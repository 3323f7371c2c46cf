"""The store side of ``cdc``: the database's own log is the key source (see :mod:`dualwrite.cdc.capture`).

- setup / before a denial: start capture on both stores (idempotent). The workflow denies writes in every
  phase's work before anything else, so capture exists before the first backfill range is copied whoever
  started the relay, and changes captured during the backfill win.
- a drain round mirrors the authoritative store's log only; the other store's log holds nothing but
  dualwrite's own writes (the application's are refused there) and is skipped while it is denied.
- catch-up: the log's end now is the point; reached when capture has applied up to it.
- teardown (CLEANUP): drop slots and publications, forget binlog positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite import control, triggers
from dualwrite.capture.store_side import RETIRED_OLD, Backlog, Key, RelayStores
from dualwrite.cdc import capture
from dualwrite.cdc.pg import TableKeys
from dualwrite.errors import AuthorityMovedError, CaptureLostError, CaptureTruncatedError
from dualwrite.mapping import TableMapping
from dualwrite.relay import RelayResult
from dualwrite.stats import RELAY, RELAY_LAG, Stats
from dualwrite.store import Store

__all__ = ["CdcSide"]

log = logging.getLogger("dualwrite.capture.cdc")

MIN_BATCH = 2000
"""A decoded log batch is read whole from the slot: smaller batches re-read the same transactions."""


class _Capture:
    """One store's capture: its tables' keys and the mapping of each towards the other store."""

    def __init__(self, rs: RelayStores, side: str) -> None:
        self.reverse = side == "new"
        self.mappings: dict[str, TableMapping] = {}
        self.tables: list[TableKeys] = []
        store = rs.store(side)
        for t in rs.spec.tables:
            m = rs.mapping_for(t.source, self.reverse)
            self.mappings[m.source_table] = m
            # the columns as reflected when the mapping was compiled (cached): the stream must show the same
            self.tables.append(TableKeys(m.source_table, list(m.source_key), list(m.key_kinds),
                                         columns=list(store.describe(m.source_table).columns)))

    def mapping_for(self) -> Callable[[str], TableMapping]:
        return lambda table: self.mappings[table]


def _denied(store: Store, migration: str, tables: list[str]) -> Callable[[], bool]:
    return lambda: all(triggers.writes_denied(store, migration, t) for t in tables)


def _drain(rs: RelayStores, phase: str, *, limit: int, max_seconds: float, should_stop: Callable[[], bool],
           sides: tuple[str, ...] | None = None) -> RelayResult:
    """Mirror the authoritative store's captured changes (or ``sides``') for up to ``max_seconds`` (until its
    log is empty), and skip the other store's log while it is denied."""
    authoritative = triggers.authoritative_side(phase)
    migration = rs.spec.name
    if capture.ended(rs.control, migration):
        return RelayResult()  # aborted or cleaned up: an activity that outlived its relay has nothing to do
    if phase in RETIRED_OLD and sides is None:
        # the old store is retired: what the new store captures is not mirrored anywhere any more
        capture.skip(rs.new, rs.control, migration, lambda: True)
        return RelayResult()
    total = RelayResult()
    started = time.monotonic()
    for side in sides or (authoritative,):
        other = "new" if side == "old" else "old"
        source, target = rs.store(side), rs.store(other)
        guarded = _target_denied(rs, other, phase) if side == authoritative and len(sides or ()) < 2 else False
        if guarded is None:
            log.info("cdc %s: authority moved since the round read phase %s; the next round mirrors", migration,
                     phase)
            break
        state = _Capture(rs, side)
        while not should_stop():
            try:
                res = capture.drain_batch(source, target, rs.control, migration, state.tables, state.mapping_for(),
                                          reverse=state.reverse, limit=limit, guarded=guarded)
            except AuthorityMovedError:
                log.info("cdc %s: authority moved during a round under phase %s; nothing written, the next round "
                         "mirrors", migration, phase)
                return total
            except CaptureTruncatedError as exc:  # noted; the position moved past it, capture goes on
                log.error("cdc %s: %s", migration, exc)
                continue
            except CaptureLostError as exc:
                # noted (status shows it until a verification with repair): capture starts again from now
                log.error("cdc %s: %s", migration, exc)
                capture.restart(source, rs.control, migration, rs.tables(side))
                continue
            total += res
            if not res.entries or time.monotonic() - started > max_seconds:
                break
    if sides is None:
        other = "new" if authoritative == "old" else "old"
        if not (other == "old" and phase in RETIRED_OLD):
            store = rs.store(other)
            try:
                capture.skip(store, rs.control, migration, _denied(store, migration, rs.tables(other)))
            except Exception as exc:  # noqa: BLE001 - a skip is housekeeping; the next round tries again
                log.warning("cdc %s: cannot skip the %s store's log: %s", migration, other, type(exc).__name__)
    return total


def _target_denied(rs: RelayStores, side: str, phase: str) -> bool | None:
    """Must the round's mirror into ``side`` check, in its own transaction, that ``side`` is still denied?

    True when ``side`` refuses the application now: the mirror checks again under a lock that lifting the
    denial waits for. Not denied: either it never was (before the first denial, histories without denials)
    or its denial was lifted after this round read ``phase``; the workflow publishes a flip before it lifts
    the denial, so then the published phase differs now (None: the round must not write)."""
    if all(triggers.writes_denied(rs.store(side), rs.spec.name, t) for t in rs.tables(side)):
        return True
    state = control.read_state(rs.control, rs.spec.name)
    if state is not None and state.phase != phase:
        return None
    return False


class CdcSide:
    """Log capture on both stores (a PostgreSQL replication slot and publication, a MariaDB binlog position)."""

    def setup(self, rs: RelayStores) -> tuple[list[str], list[str]]:
        captured: list[str] = []
        for side in ("old", "new"):
            store, tables = rs.store(side), rs.tables(side)
            capture.setup(store, rs.control, rs.spec.name, tables)
            captured += [f"{store.name}/{t}" for t in tables]
        return [], captured

    def teardown(self, rs: RelayStores) -> None:
        """The relay's end (CLEANUP, abort): marked ended first, so nothing still running starts it again."""
        capture.end(rs.control, rs.spec.name)
        for store in (rs.old, rs.new):
            capture.teardown(store, rs.control, rs.spec.name)

    def before_denial(self, rs: RelayStores) -> None:
        self.setup(rs)  # capture exists before anything the denial is for happens (the backfill's first range)

    def drain_round(self, rs: RelayStores, phase: str, *, limit: int, max_seconds: float, stats: Stats | None,
                    should_stop: Callable[[], bool]) -> RelayResult:
        res = _drain(rs, phase, limit=max(limit, MIN_BATCH), max_seconds=max_seconds, should_stop=should_stop)
        if res.entries and stats is not None:
            stats.record(counts=[(RELAY, "entries", res.entries), (RELAY, "mirrored", res.mirrored),
                                 (RELAY, "failed", res.failed)])
            stats.gauge(RELAY_LAG, res.lag_seconds)
        return res

    def backlog(self, rs: RelayStores) -> Backlog:
        """Bytes of log not yet applied (not entries: a log has no rows to count), and retention warnings."""
        out = Backlog()
        for store in (rs.old, rs.new):
            try:
                n = capture.lag_bytes(store, rs.control, rs.spec.name)
                warning = capture.retention_warning(store, rs.control, rs.spec.name)
            except Exception:  # noqa: BLE001 - information only
                n, warning = None, None
            out.remaining += n or 0
            if warning:
                out.warnings.append(warning)
        try:
            out.lost = capture.losses(rs.control, rs.spec.name, [rs.old, rs.new])
        except Exception:  # noqa: BLE001 - information only; the next drain asks again
            log.warning("cdc %s: cannot read the capture's loss marks", rs.spec.name)
        return out

    def catch_up_points(self, rs: RelayStores, sides: Sequence[str]) -> list[Any]:
        points = [(side, capture.end_point(rs.store(side), rs.control, rs.spec.name)) for side in sides]
        return [(side, p) for side, p in points if p is not None]

    def behind(self, rs: RelayStores, points: Sequence[Any]) -> tuple[int, tuple[str, ...]]:
        waiting = tuple(side for side, p in points
                        if not capture.reached(rs.store(side), rs.control, rs.spec.name, p))
        return len(waiting), waiting

    def catch_up_round(self, rs: RelayStores, sides: tuple[str, ...], phase: str, *, limit: int,
                       should_stop: Callable[[], bool]) -> RelayResult:
        return _drain(rs, phase, limit=limit, max_seconds=1.0, should_stop=should_stop, sides=sides)

    def pending_keys(self, store: Store, control_store: Store, migration: str, spec_table: str,
                     mapping: TableMapping) -> set[Key]:
        """In flight: captured in the store's log, not applied yet."""
        return capture.pending_keys(store, control_store, migration, mapping.source_table, mapping.source_key,
                                    mapping.key_kinds)

    def abort(self, rs: RelayStores, exists: Callable[[Store, str], bool]) -> list[str]:
        """Capture and the denied writes go: a replication slot left behind keeps WAL on the server until
        someone drops it (the most reported failure of log-based tools), and a table left denying writes
        refuses the application after it was told the migration is over."""
        removed: list[str] = []
        capture.end(rs.control, rs.spec.name)  # first: a capture activity still running cannot start it again
        for store in (rs.old, rs.new):
            capture.teardown(store, rs.control, rs.spec.name)
            removed.append(f"{store.name}/capture")
        for side in ("old", "new"):
            store = rs.store(side)
            for table in rs.tables(side):
                if exists(store, table):
                    triggers.allow_writes(store, rs.spec.name, [table])
                    triggers.drop_refusal_counters(store, rs.spec.name, [table])
                    removed.append(f"{store.name}/{table}")
        return removed
