"""What a capture method does against the stores: the store side of :mod:`dualwrite.capture`.

The facts in :class:`~dualwrite.capture.CaptureMethod` say *what* a method is; :func:`store_side_for` gives the
object that *does* it for the relay, the verification and the abort: set capture up and take it down, drain
one round, report the backlog, catch up to a point, name the keys still in flight. Three kinds cover the six
methods:

- :class:`~dualwrite.capture.keylog_side.KeyLogSide`: a key log on each store (``outbox``; ``triggers`` with
  the capture triggers that fill it); ``outbox`` through its subclass
  :class:`~dualwrite.capture.stream_side.StreamOutboxSide`, whose Redis new store's log is a stream;
- :class:`~dualwrite.capture.cdc_side.CdcSide`: the database's own log (``cdc``: a replication slot, the
  binlog);
- :class:`InlineSide`: nothing to relay (``strict``, ``sync``, ``async``: the adapter writes both stores).

No Temporal here: the activities call these and own heartbeats, cancellation and error mapping. Not
imported by :mod:`dualwrite.capture` itself, whose facts workflow code reads inside its sandbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dualwrite import triggers
from dualwrite.capture import CaptureMethod, method_for
from dualwrite.mapping import TableMapping
from dualwrite.relay import RelayResult
from dualwrite.spec import MigrationSpec
from dualwrite.stats import Stats
from dualwrite.store import Store

__all__ = ["RETIRED_OLD", "Backlog", "InlineSide", "RelayStores", "StoreSide", "store_side", "store_side_for"]

RETIRED_OLD = ("CLEANUP", "DONE")
"""Phases in which the old store is retired: nothing is mirrored into it any more."""

Key = tuple[Any, ...]


@dataclass
class RelayStores:
    """One migration's stores as the relay sees them, and its mappings ((spec table, reverse) -> mapping
    from the store holding the change to the other one)."""

    spec: MigrationSpec
    old: Store
    new: Store
    control: Store
    mapping_for: Callable[[str, bool], TableMapping]

    @property
    def method(self) -> CaptureMethod:
        return method_for(self.spec.strategy)

    def store(self, side: str) -> Store:
        return self.old if side == "old" else self.new

    def tables(self, side: str) -> list[str]:
        """The migrated tables as the store of ``side`` names them (from the spec alone: no reflection)."""
        return [t.source if side == "old" else t.target_table for t in self.spec.tables]

    def denies_writes(self) -> bool:
        """Writes that bypass dualwrite are denied on the non-authoritative store: database-level capture of a
        migration whose authority moves as a whole (per-tenant authority cannot be denied table by table)."""
        return self.method.database_capture and not self.spec.tenant_tables


@dataclass
class Backlog:
    """What a relay leaves behind after a drain: entries (or, for a database log, bytes) still waiting, the
    age of the oldest, and the writes refused by the denied-writes triggers (None: not counted)."""

    remaining: int = 0
    lag_seconds: float | None = None
    refused_writes: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)
    #: what capture missed (log capture): a verification with repair must level the stores
    lost: list[str] = field(default_factory=list)


class StoreSide(Protocol):
    """The store-side operations of one capture method."""

    def setup(self, rs: RelayStores) -> tuple[list[str], list[str]]:
        """Start capture on both stores (idempotent); ('store/log' created, 'store/table' captured)."""
        ...

    def teardown(self, rs: RelayStores) -> None:
        """Stop capture on both stores; the spec alone names what to remove (the old table may be retired)."""
        ...

    def before_denial(self, rs: RelayStores) -> None:
        """What must exist before writes are denied on a store (capture that sees the backfill's writes)."""
        ...

    def drain_round(self, rs: RelayStores, phase: str, *, limit: int, max_seconds: float, stats: Stats | None,
                    should_stop: Callable[[], bool]) -> RelayResult:
        """Mirror what the capture holds for up to ``max_seconds`` under the published ``phase``."""
        ...

    def backlog(self, rs: RelayStores) -> Backlog:
        ...

    def catch_up_points(self, rs: RelayStores, sides: Sequence[str]) -> list[Any]:
        """Where each side's capture ends now: the point a catch-up must reach."""
        ...

    def behind(self, rs: RelayStores, points: Sequence[Any]) -> tuple[int, tuple[str, ...]]:
        """(how much is still before the points, the sides that are behind)."""
        ...

    def catch_up_round(self, rs: RelayStores, sides: tuple[str, ...], phase: str, *, limit: int,
                       should_stop: Callable[[], bool]) -> RelayResult:
        ...

    def pending_keys(self, store: Store, control_store: Store, migration: str, spec_table: str,
                     mapping: TableMapping) -> set[Key]:
        """Keys of ``mapping``'s source table captured on ``store`` and not mirrored yet (in flight)."""
        ...

    def abort(self, rs: RelayStores, exists: Callable[[Store, str], bool]) -> list[str]:
        """Remove this migration's capture from both stores at an abort; 'store/table' of what went."""
        ...


class InlineSide:
    """``strict``, ``sync``, ``async``: the adapter writes both stores; there is nothing to capture or relay."""

    def setup(self, rs: RelayStores) -> tuple[list[str], list[str]]:
        return [], []

    def teardown(self, rs: RelayStores) -> None:
        return None

    def before_denial(self, rs: RelayStores) -> None:
        return None

    def drain_round(self, rs: RelayStores, phase: str, *, limit: int, max_seconds: float, stats: Stats | None,
                    should_stop: Callable[[], bool]) -> RelayResult:
        return RelayResult()

    def backlog(self, rs: RelayStores) -> Backlog:
        return Backlog()

    def catch_up_points(self, rs: RelayStores, sides: Sequence[str]) -> list[Any]:
        return []

    def behind(self, rs: RelayStores, points: Sequence[Any]) -> tuple[int, tuple[str, ...]]:
        return 0, ()

    def catch_up_round(self, rs: RelayStores, sides: tuple[str, ...], phase: str, *, limit: int,
                       should_stop: Callable[[], bool]) -> RelayResult:
        return RelayResult()

    def pending_keys(self, store: Store, control_store: Store, migration: str, spec_table: str,
                     mapping: TableMapping) -> set[Key]:
        return set()

    def abort(self, rs: RelayStores, exists: Callable[[Store, str], bool]) -> list[str]:
        return []


def store_side_for(method: CaptureMethod) -> StoreSide:
    """The store side of a capture method, chosen by its facts (never by its name)."""
    if method.reads_database_log:
        from dualwrite.capture.cdc_side import CdcSide  # noqa: PLC0415 - the CDC drivers load only for cdc

        return CdcSide()
    if method.key_log is not None and method.database_capture:
        from dualwrite.capture.keylog_side import KeyLogSide  # noqa: PLC0415 - it imports this module

        return KeyLogSide(method.key_log, capture_triggers=True)
    if method.key_log is not None:  # outbox: KeyLogSide, with a stream for a Redis new store
        from dualwrite.capture.stream_side import StreamOutboxSide  # noqa: PLC0415 - it imports this module

        return StreamOutboxSide(method.key_log)
    return InlineSide()


def store_side(spec: MigrationSpec) -> StoreSide:
    """The store side of a migration's write strategy."""
    return store_side_for(method_for(spec.strategy))


def allow_new_store(rs: RelayStores) -> None:
    """The new store serves the tables now: nothing of the denied writes stays there (the retired old tables
    keep refusing writes that bypass dualwrite, with their counters). A Redis new store denied nothing."""
    from dualwrite.stores import is_redis  # noqa: PLC0415 - keeps this module's imports light

    if is_redis(rs.new):
        return
    tables = rs.tables("new")
    triggers.allow_writes(rs.new, rs.spec.name, tables)
    triggers.drop_refusal_counters(rs.new, rs.spec.name, tables)
